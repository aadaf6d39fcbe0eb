"""Intervals on a reference model's card: stored beside the figures, checked, never moving a figure."""

import json

import numpy as np
import pytest

from workers.evaluation.card import drift, interval_table, place_table, stored_metrics, write_intervals
from workers.evaluation.intervals import BootstrapSettings, mean_figure, pooled_ratio_figure

SETTINGS = BootstrapSettings(seed=3, n_resamples=300)
END = "<!-- metrics:end -->"
CARD = f"# m\n<!-- metrics:begin -->\n| metric | value |\n|---|---|\n| dice_mean | 0.8000 |\n{END}\n\n## Limits\n"


@pytest.fixture
def model(tmp_path, covid_manifest_json):
    manifest = tmp_path / "manifest.json"
    raw = json.loads(covid_manifest_json)
    raw["metrics"] = {"dice_mean": 0.8}
    manifest.write_text(json.dumps(raw))
    card = tmp_path / "CARD.md"
    card.write_text(CARD)
    return manifest, card


@pytest.fixture
def covid_manifest_json() -> str:
    from devkit.reference_models import REPO_ROOT

    return (REPO_ROOT / "models" / "covid-lesion-segmentation-reference" / "1" / "manifest.json").read_text()


def intervals_of(values: np.ndarray) -> dict:
    return {"figures": {"dice_mean": mean_figure(values, SETTINGS)}, "bootstrap": SETTINGS.as_json()}


def test_write_intervals_stores_bounds_and_card_table_and_check_reproduces_them(model) -> None:
    manifest, card = model
    intervals = intervals_of(np.linspace(0.7, 0.9, 21))
    table = interval_table(intervals["figures"], intervals["bootstrap"], "frames")
    assert write_intervals(manifest, card, END, intervals, {"dice_mean": 0.8}, {"dice_mean": "dice_mean"}, table) == []
    metrics = json.loads(manifest.read_text())["metrics"]
    assert metrics["dice_mean"] == 0.8 and metrics["dice_mean_ci95_n"] == 21
    assert metrics["dice_mean_ci95_low"] < 0.8 < metrics["dice_mean_ci95_high"]
    text = card.read_text()
    assert "| dice_mean | 0.8000 |\n\n95 % intervals, bootstrap over the frames (300 resamples, seed 3)" in text
    assert text.endswith(f"| 21 |\n{END}\n\n## Limits\n")
    assert drift(metrics, intervals["figures"], 0.02) == []
    # Written again: one table, not two.
    write_intervals(manifest, card, END, intervals, {"dice_mean": 0.8}, {"dice_mean": "dice_mean"}, table)
    assert card.read_text() == text


def test_write_intervals_refuses_when_a_point_figure_moved(model) -> None:
    manifest, card = model
    before = manifest.read_text(), card.read_text()
    intervals = intervals_of(np.linspace(0.72, 0.92, 21))
    moved = write_intervals(manifest, card, END, intervals, {"dice_mean": 0.82}, {"dice_mean": "dice_mean"}, "")
    assert moved == ["dice_mean: card/manifest 0.8, recomputed 0.82"]
    assert (manifest.read_text(), card.read_text()) == before


def test_drift_names_missing_and_moved_bounds() -> None:
    figures = {"cpm": {"value": 0.8, "ci95": [0.7, 0.9], "n": 30}}
    assert drift({}, figures, 0.03)[0] == ("cpm_ci95_low: measured 0.7000, not in the manifest (evaluate.py "
                                           "--write-intervals stores it)")
    stored = {**stored_metrics(figures), "cpm_ci95_high": 0.95}
    assert drift(stored, figures, 0.03) == ["cpm_ci95_high: manifest 0.95, measured 0.9000 (-0.0500, tolerance 0.03)"]


def test_place_table_replaces_an_earlier_table() -> None:
    once = place_table(CARD, "\n95 % intervals, bootstrap over the scans (old)\n", END)
    twice = place_table(once, "\n95 % intervals, bootstrap over the scans (new)\n", END)
    assert "(old)" not in twice and twice.count("95 % intervals") == 1


def test_pooled_ratio_figure_is_the_pooled_dice_with_an_interval_over_cases() -> None:
    overlap, sizes = np.array([90, 40, 10, 200]), np.array([200, 100, 30, 410])
    figure = pooled_ratio_figure(overlap, sizes, SETTINGS, scale=2.0)
    assert figure["value"] == pytest.approx(2 * overlap.sum() / sizes.sum(), abs=1e-6) and figure["n"] == 4
    assert figure["ci95"][0] <= figure["value"] <= figure["ci95"][1]
