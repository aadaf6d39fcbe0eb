"""bench/stats.py: the medians and ranges the benchmark reports, and ratios taken within each repetition."""

import pytest

from bench import stats


def test_spread_is_the_median_with_the_range():
    assert stats.spread([3.0, 1.0, 10.0, 2.0, 4.0]) == {"median": 3.0, "min": 1.0, "max": 10.0, "n": 5}


def test_ratios_pair_the_repetitions_rather_than_divide_medians():
    # The machine slowed down in the second repetition: both rows halved, their ratio did not move.
    assert stats.paired_ratios([80.0, 40.0], [100.0, 50.0]) == {"median": 0.8, "min": 0.8, "max": 0.8, "n": 2}


def test_unpaired_repetitions_and_no_repetitions_are_refused():
    with pytest.raises(ValueError):
        stats.paired_ratios([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        stats.spread([])


def test_text_shows_a_range_only_for_repeated_runs():
    assert stats.text(stats.spread([80.1, 76.0, 83.2]), " /s") == "80.1 /s (76–83.2)"
    assert stats.text(stats.spread([80.1])) == "80.1"
