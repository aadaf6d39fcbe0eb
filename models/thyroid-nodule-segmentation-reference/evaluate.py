"""Evaluate the committed thyroid nodule segmentation model on the held-out synthetic test split.

    .venv/bin/python models/thyroid-nodule-segmentation-reference/evaluate.py           # print the metrics
    .venv/bin/python models/thyroid-nodule-segmentation-reference/evaluate.py --write   # into manifest.json and CARD.md
    .venv/bin/python models/thyroid-nodule-segmentation-reference/evaluate.py --check   # exit 1 on drift
    .venv/bin/python models/thyroid-nodule-segmentation-reference/evaluate.py --write-intervals  # add intervals only

Each test frame goes through the serving steps (`workers.pipelines.thyroid_malignancy.segment_nodule`:
imaging-region detection on the screenshot, 96x96 input, probability map resized back to the region,
threshold, most confident blob) and the mask is compared with the generator's at full resolution.

The mean Dice gets its 95 % interval by bootstrap over the frames with the code `medimg eval` uses
(workers/evaluation); `--check` reproduces the interval as it reproduces the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # the checkout's code, not an installed copy
    sys.path.insert(0, str(REPO_ROOT))

from workers.evaluation.model_scripts import ModelFolder  # noqa: E402

# The frames are the classifier's generators' (its folder holds them).
MODEL = ModelFolder.of_script(__file__, imports_from=ModelFolder.named("thyroid-malignancy-reference").path)

import external_us  # noqa: E402
from app.model_repository import load_model_version  # noqa: E402
from workers.evaluation import card as model_card  # noqa: E402
from workers.evaluation import model_scripts, validation_sets  # noqa: E402

VERSION_DIR = MODEL.version_dir
MANIFEST_PATH = MODEL.manifest_path
CARD_PATH = MODEL.card_path
N_TEST = 300
CHECK_TOLERANCE = 0.02
METRIC_KEYS = ("dice_mean", "dice_median", "dice_p10", "detection_rate", "diameter_abs_rel_error_median",
               "diameter_within_10pct")
CARD_BEGIN = "<!-- metrics:begin (written by evaluate.py --write) -->"
CARD_END = "<!-- metrics:end -->"


def evaluate(n_images: int = N_TEST, with_intervals: bool = False, split: str = "test") -> dict:
    from app.errors import BadInputError
    from workers.imaging.ultrasound import Spacing, find_imaging_region, max_diameter_px, to_grey
    from workers.onnx import load_model
    from workers.pipelines.thyroid_malignancy import PreparedFrame, segment_nodule

    segmenter = load_model(load_model_version(VERSION_DIR), ["CPUExecutionProvider"])
    dice, found, errors = [], [], []
    for index in range(n_images):
        item = external_us.split_or_external_item(split, index)
        grey = to_grey(item.frame)
        prepared = PreparedFrame(item.frame, grey, find_imaging_region(grey), Spacing(None, "none"))
        try:
            mask = segment_nodule(prepared, segmenter).mask
        except BadInputError:
            mask = np.zeros_like(item.mask)
        found.append(bool(mask.any()))
        dice.append(2.0 * float((mask & item.mask).sum()) / float(mask.sum() + item.mask.sum()))
        if mask.any():
            measured = max_diameter_px(mask, (item.pixel_spacing_mm,) * 2)
            errors.append(abs(measured / item.max_diameter_mm - 1))
    results = {
        "n_images": n_images,
        "dice_mean": float(np.mean(dice)),
        "dice_median": float(np.median(dice)),
        "dice_p10": float(np.percentile(dice, 10)),
        "detection_rate": float(np.mean(found)),
        "diameter_abs_rel_error_median": float(np.median(errors)),
        "diameter_within_10pct": float(np.mean(np.array(errors) <= 0.10)),
        "sha256": segmenter.manifest.sha256,
    }
    if with_intervals:
        results["intervals"] = intervals(np.array(dice))
    return results


def intervals(dice: np.ndarray) -> dict:
    """The mean Dice's 95 % interval by bootstrap over the frames (workers/evaluation, as `medimg eval`)."""
    from workers.evaluation.intervals import BootstrapSettings, mean_figure

    settings = BootstrapSettings()
    return {"figures": {"dice_mean": mean_figure(dice, settings)}, "bootstrap": settings.as_json()}


def interval_table(results: dict) -> str:
    return model_card.interval_table(results["intervals"]["figures"], results["intervals"]["bootstrap"], "frames")


def write(results: dict) -> None:
    with model_scripts.edited_manifest(MANIFEST_PATH) as raw:
        raw["metrics"] = {**{k: round(results[k], 4) for k in METRIC_KEYS},
                          **model_card.stored_metrics(results["intervals"]["figures"]),
                          **validation_sets.kept_figures(raw["metrics"], VALIDATION_SETS.values())}
    table = "\n".join(["| metric | value |", "|---|---|"] + [f"| {k} | {results[k]:.4f} |" for k in METRIC_KEYS]
                      + [f"| n_images | {results['n_images']} |"])
    model_scripts.write_card_block(CARD_PATH, CARD_BEGIN, CARD_END,
                                   f"{CARD_BEGIN}\n{table}\n{interval_table(results)}{CARD_END}")


def check(results: dict, stored: dict[str, float]) -> list[str]:
    return (model_scripts.differences(stored, {key: results[key] for key in METRIC_KEYS}, CHECK_TOLERANCE)
            + model_card.drift(stored, results["intervals"]["figures"], CHECK_TOLERANCE))


def write_intervals(results: dict) -> list[str]:
    """Only the intervals, into the manifest and beside the card's figures (refused if a figure moved)."""
    return model_card.write_intervals(MANIFEST_PATH, CARD_PATH, CARD_END, results["intervals"], results,
                                      {"dice_mean": "dice_mean"}, interval_table(results))


# Read once after version 1 was fixed (issue #21); the card's headline is the untouched split, the original
# test split's block stays as history (the cascade's classifier was retrained after that split was read).
VALIDATION_SETS = {
    "untouched-test": validation_sets.ValidationSet(
        "untouched_test", "Headline: untouched test split (first read after version 1 was fixed)",
        f"{N_TEST} frames of `synthetic_us.py` from seeds [{external_us.su.SPLIT_SEEDS['untouched-test']}, i], "
        "a split no script or test had used, generated and read once after the model was fixed."),
    "external": validation_sets.ValidationSet(
        "external", "External validation set (independently written generator)",
        f"{N_TEST} frames of `thyroid-malignancy-reference/external_us.py` (seeds [{external_us.EXTERNAL_SEED}, "
        "i]): its own anatomy, nodule outlines, gamma speckle and display map. Never used for training or "
        "selection."),
}
POINT_FIGURES = ("dice_median", "detection_rate", "diameter_within_10pct")


def set_figures(results: dict) -> dict[str, dict]:
    return validation_sets.with_point_figures(results, POINT_FIGURES, results["n_images"])


def evaluate_sets(n_images: int = N_TEST) -> dict[str, dict]:
    return {split: evaluate(n_images, with_intervals=True, split=split) for split in VALIDATION_SETS}


def write_sets(by_split: dict[str, dict]) -> None:
    validation_sets.write_all(MANIFEST_PATH, CARD_PATH, VALIDATION_SETS, {s: set_figures(r) for s, r in by_split.items()},
                              by_split["external"]["intervals"]["bootstrap"], "frames", "## Evaluation\n")


def check_sets(by_split: dict[str, dict], stored: dict[str, float]) -> list[str]:
    return validation_sets.drift_all(stored, VALIDATION_SETS, {s: set_figures(r) for s, r in by_split.items()},
                                     CHECK_TOLERANCE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--check", action="store_true")
    model_card.add_write_intervals_option(parser)
    parser.add_argument("--write-sets", action="store_true", help="store the untouched and external sets' figures")
    parser.add_argument("-n", type=int, default=N_TEST)
    args = parser.parse_args()
    results = evaluate(args.n, with_intervals=True)
    print(json.dumps(results, indent=2))
    by_split = evaluate_sets(args.n) if args.write_sets or args.check else {}
    if args.write_sets:
        write_sets(by_split)
    if args.write:
        write(results)
    if args.write_intervals:
        if model_card.refused(write_intervals(results)):
            sys.exit(1)
    if args.check:
        stored = MODEL.stored_metrics()
        if model_scripts.report_drift(check(results, stored) + check_sets(by_split, stored), MANIFEST_PATH):
            sys.exit(1)


if __name__ == "__main__":
    main()
