"""Bootstrap intervals: reproducible from the seed, around the estimate, honest about undefined resamples."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from devkit.reference_models import load_reference_module
from workers.evaluation.classification import binary_figures
from workers.evaluation.intervals import BootstrapSettings, bootstrap_figure, mean_figure

SETTINGS = BootstrapSettings(seed=3, n_resamples=400)


def test_mean_figure_is_reproducible_and_holds_the_mean() -> None:
    values = np.random.default_rng(0).normal(0.8, 0.05, 40)
    first, again = mean_figure(values, SETTINGS), mean_figure(values, SETTINGS)
    assert first == again and first["n"] == 40
    assert first["value"] == pytest.approx(values.mean(), abs=1e-6)
    low, high = first["ci95"]
    assert low < first["value"] < high and high - low < 0.1


def test_binary_figures_auc_is_scikit_learns_with_stratified_interval() -> None:
    rng = np.random.default_rng(1)
    truth = np.r_[np.ones(15, bool), np.zeros(25, bool)]
    probability = np.clip(truth * 0.3 + rng.uniform(0, 0.7, 40), 0, 1)
    figures = binary_figures(truth, probability, {"point": 0.5}, SETTINGS)
    assert figures["auc"]["value"] == pytest.approx(roc_auc_score(truth, probability), abs=1e-6)
    assert figures["sensitivity@point"]["n"] == 15 and figures["specificity@point"]["n"] == 25
    for figure in figures.values():
        assert figure["ci95"][0] <= figure["value"] <= figure["ci95"][1]


def test_bootstrap_figure_skips_undefined_resamples_and_counts_them() -> None:
    has_event = np.array([1.0, 0, 0, 0, 0, 0])  # a figure undefined when no case with an event is drawn

    def statistic(index):
        return 1.0 if has_event[index].any() else float("nan")

    figure = bootstrap_figure(statistic, [np.arange(6)], SETTINGS)
    assert figure["ci95"] == [1.0, 1.0]
    assert 0 < figure["undefined_resamples"] < SETTINGS.n_resamples  # (5/6)^6 of them, about a third


def test_dr_card_intervals_come_from_the_eval_code() -> None:
    evaluate = load_reference_module("dr-grading-reference", "evaluate")
    grades = np.repeat(np.arange(5), 6)
    predicted = grades.copy()
    predicted[[1, 8]] = [1, 2]
    manifest = evaluate.load_manifest()
    # Referable cases halfway between the operating point's threshold and 1, so all are called whatever it is.
    score = np.where(grades >= 2, (1.0 + manifest.operating_point().threshold) / 2, 0.1)
    result = evaluate.intervals(grades, predicted, score, manifest, n_resamples=200)
    assert set(result["figures"]) == set(evaluate.METRIC_KEYS)
    assert result["figures"]["referable_sensitivity"]["value"] == 1.0
    assert result["bootstrap"]["n_resamples"] == 200
