"""The external validation generators (issue #21) and the card blocks of the sets read after a model was fixed."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from devkit.reference_models import load_reference_module, reference_model_dir
from workers.evaluation import validation_sets


@pytest.fixture(scope="module")
def external_scan():
    return load_reference_module("lung-nodule-reference", "external_ct").external_scan(1)


def test_external_ct_holds_every_nodule_kind_in_the_acquisition_ranges(external_scan) -> None:
    ct = load_reference_module("lung-nodule-reference", "external_ct")
    again = ct.external_scan(1)
    assert np.array_equal(external_scan.hu, again.hu) and external_scan.nodules == again.nodules
    assert {n.kind for n in external_scan.nodules} == set(ct.KINDS)
    assert 0.6 <= external_scan.grid.spacing[2] <= 2.5 and 0.55 <= external_scan.grid.spacing[0] <= 0.95
    assert external_scan.grid.spacing[2] <= external_scan.grid.slice_thickness <= 2.5


def test_external_ct_nodules_are_solid_where_the_truth_says(external_scan) -> None:
    """Each nodule's centre, mapped through the grid, is soft tissue in the noisy image: truth and pixels agree."""
    grid = external_scan.grid
    for nodule in external_scan.nodules:
        if nodule.diameter_mm < 6:
            continue
        column, row, slice_ = np.round(grid.to_voxel(np.asarray(nodule.centre_mm))).astype(int)
        patch = external_scan.hu[max(slice_ - 1, 0):slice_ + 2, row - 1:row + 2, column - 1:column + 2]
        assert float(np.median(patch)) > -300, (nodule, float(np.median(patch)))


def test_external_ct_vessels_cross_slices_end_on(external_scan) -> None:
    """Vessels seen end-on: small round bright dots inside the lung on a single slice."""
    from scipy import ndimage

    middle = external_scan.hu[len(external_scan.hu) // 2]
    labels, count = ndimage.label(middle > -400)
    sizes = ndimage.sum_labels(np.ones_like(middle), labels, np.arange(1, count + 1))
    pixel_area = external_scan.grid.spacing[0] ** 2
    assert ((sizes * pixel_area > 1) & (sizes * pixel_area < 30)).sum() >= 3


def test_external_us_items_are_deterministic_and_labelled() -> None:
    us = load_reference_module("thyroid-malignancy-reference", "external_us")
    items = [us.external_item(i) for i in range(30)]
    again = us.external_item(3)
    assert np.array_equal(items[3].frame, again.frame) and np.array_equal(items[3].mask, again.mask)
    for item in items:
        x0, y0, x1, y1 = item.region
        assert item.mask.any() and not item.mask[:y0].any() and not item.mask[:, :x0].any()
        assert item.max_diameter_mm > 2
    assert 0.1 < np.mean([item.malignant for item in items]) < 0.7
    assert us.split_or_external_item("test", 0).points == load_reference_module(
        "thyroid-malignancy-reference", "synthetic_us").split_item("test", 0).points


def test_set_figures_written_to_card_and_manifest_and_drift_detected(tmp_path) -> None:
    source = reference_model_dir("thyroid-nodule-segmentation-reference") / "1"
    for name in ("manifest.json", "CARD.md"):
        shutil.copy(source / name, tmp_path / name)
    trial = validation_sets.ValidationSet("trial_set", "A trial set", "Made in a test.")
    figures = {"dice_mean": {"value": 0.81, "ci95": [0.78, 0.84], "n": 40}}
    bootstrap = {"n_resamples": 2000, "seed": 1}
    validation_sets.write_all(tmp_path / "manifest.json", tmp_path / "CARD.md", {"t": trial}, {"t": figures},
                              bootstrap, "frames", "## Evaluation\n")
    stored = json.loads((tmp_path / "manifest.json").read_text())["metrics"]
    assert stored["trial_set_dice_mean"] == 0.81 and stored["trial_set_dice_mean_ci95_low"] == 0.78
    card = (tmp_path / "CARD.md").read_text()
    assert card.index("## Evaluation") < card.index(trial.begin) < card.index("| dice_mean | 0.8100 | 0.7800 – 0.8400")
    assert validation_sets.drift(stored, trial, figures, 0.02) == []
    moved = {"dice_mean": {"value": 0.75, "ci95": [0.72, 0.78], "n": 40}}
    assert len(validation_sets.drift(stored, trial, moved, 0.02)) == 3  # the value and both bounds
    validation_sets.write_all(tmp_path / "manifest.json", tmp_path / "CARD.md", {"t": trial}, {"t": moved},
                              bootstrap, "frames", "## Evaluation\n")
    assert (tmp_path / "CARD.md").read_text().count(trial.begin) == 1  # replaced, not added again


def test_external_fundus_is_deterministic_and_graded_from_what_it_painted() -> None:
    fundus = load_reference_module("dr-grading-reference", "external_fundus")
    icdr = load_reference_module("dr-grading-reference", "synthetic_fundus")
    items = [fundus.external_item(i) for i in range(5)]  # requested grades 0..4
    again = fundus.external_item(2)
    assert np.array_equal(items[2].rgb, again.rgb) and items[2].lesions == again.lesions
    for item in items:
        assert item.grade == icdr.icdr_grade(item.lesions)
        assert (item.lesions.total == 0) == (item.grade == 0)
    assert items[0].grade == 0 and items[4].grade == 4 and items[4].lesions.neovascular_tufts >= 1
    # The same eye and camera without lesions: the diseased rendering differs from it, so the lesions were painted.
    healthy = fundus.external_item(4, asked_grade=0)
    assert healthy.grade == 0 and healthy.rgb.shape == items[4].rgb.shape
    changed = np.abs(healthy.rgb.astype(int) - items[4].rgb.astype(int)).max(axis=-1) > 40
    assert changed.sum() > 50


@pytest.fixture(scope="module")
def external_chest():
    chest = load_reference_module("covid-lesion-segmentation-reference", "external_chest")
    return chest, chest.external_case(1, matrix=72, slice_spacing=5.0)


def test_external_chest_is_deterministic_and_its_labels_follow_the_painted_density(external_chest) -> None:
    chest, case = external_chest
    again = chest.external_case(1, matrix=72, slice_spacing=5.0)
    assert np.array_equal(case.hu, again.hu) and np.array_equal(case.labels, again.labels)
    assert case.lesions and not (case.labels > 0)[~case.lung_mask].any()  # lesions only inside the lungs
    ggo, consolidation = case.labels == 1, case.labels == 2
    clear_lung = case.lung_mask & (case.labels == 0)
    assert ggo.any() and consolidation.any()
    # Noisy HU where the truth says: consolidation dense, ground glass between it and clear lung.
    assert float(np.median(case.hu[consolidation])) > -350
    assert -800 < float(np.median(case.hu[ggo])) < -250
    assert float(np.median(case.hu[clear_lung])) < -750
    assert set(np.unique(case.lung_side[case.lung_mask])) == {1, 2}


def _card_rows(card: str, validation_set) -> dict[str, float]:
    text = card.split(validation_set.begin, 1)[1].split(validation_set.end, 1)[0]
    return {cells[0]: float(cells[1]) for line in text.splitlines()
            if (cells := [c.strip() for c in line.strip("|").split("|")]) and len(cells) == 4
            and cells[1].replace(".", "").replace("-", "").isdigit()}


@pytest.mark.parametrize("model_id", ["dr-grading-reference", "covid-lesion-segmentation-reference"])
def test_external_card_block_matches_the_manifest(model_id) -> None:
    """The committed card's external block and the manifest's `external_*` metrics are the same figures."""
    folder = reference_model_dir(model_id) / "1"
    stored = json.loads((folder / "manifest.json").read_text())["metrics"]
    external = validation_sets.ValidationSet("external", "", "")
    rows = _card_rows((folder / "CARD.md").read_text(), external)
    assert rows, "no external block on the card"
    for key, value in rows.items():
        assert abs(stored[f"external_{key}"] - value) < 1e-3, key
