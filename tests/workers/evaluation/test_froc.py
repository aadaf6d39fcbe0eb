"""The LUNA16 hit rule on hand-placed findings."""

import pytest

from workers.evaluation.froc import Candidate, Nodule, cpm, match_scan, sensitivity_at


def test_match_scan_counts_a_nodule_once_and_ignores_its_second_hit() -> None:
    nodules = [Nodule((0.0, 0.0, 0.0), 10.0), Nodule((50.0, 0.0, 0.0), 6.0)]
    candidates = [Candidate((1.0, 1.0, 1.0), 0.9), Candidate((-2.0, 0.0, 0.0), 0.95),  # two hits on nodule 1
                  Candidate((50.0, 3.5, 0.0), 0.8),  # 3.5 mm from a 6 mm nodule: outside its radius
                  Candidate((100.0, 0.0, 0.0), 0.3)]
    scan = match_scan(nodules, candidates)
    assert scan.nodule_scores == [0.95, None]
    assert sorted(scan.false_positive_scores) == [0.3, 0.8]


def test_cpm_interpolates_the_froc_curve_at_the_seven_rates() -> None:
    # Two scans, two nodules: one found at 0.9; false positives at 0.8 and 0.1 (one per scan at the lowest).
    scans = [match_scan([Nodule((0.0, 0.0, 0.0), 10.0)], [Candidate((0.0, 0.0, 0.0), 0.9),
                                                           Candidate((40.0, 0.0, 0.0), 0.8)]),
             match_scan([Nodule((0.0, 0.0, 0.0), 10.0)], [Candidate((40.0, 0.0, 0.0), 0.1)])]
    at = sensitivity_at(scans)
    assert at[0.125] == pytest.approx(0.5)  # before any false positive, half the nodules
    assert at[8.0] == pytest.approx(0.5)
    assert cpm(scans) == pytest.approx(0.5)
