"""Evaluate the committed DR-grading reference model on the held-out synthetic test split.

    .venv/bin/python models/dr-grading-reference/evaluate.py           # print the metrics
    .venv/bin/python models/dr-grading-reference/evaluate.py --write   # store them in manifest.json and CARD.md
    .venv/bin/python models/dr-grading-reference/evaluate.py --check   # exit 1 if they drift from the manifest
    .venv/bin/python models/dr-grading-reference/evaluate.py --write-sets  # the external set's figures

Every figure gets its 95 % interval by bootstrap over images from the code `medimg eval` uses
(workers/evaluation: scipy.stats.bootstrap, seed and resamples printed), so the card and a site's own
evaluation report intervals the same way.

The test images go through the manifest's preprocessing (the serving `preprocess_fundus`) and the committed
`1/model.onnx` through ONNX Runtime, exactly as the service would run them. The operating-point threshold
and the calibration temperature are read from the manifest; both were chosen on the val split by train.py, never
on this split.
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

MODEL = ModelFolder.of_script(__file__)

import synthetic_fundus  # noqa: E402
from app.schemas.manifest import ModelManifest  # noqa: E402
from split_tensors import EXTERNAL, split_tensors  # noqa: E402
from workers.evaluation import model_scripts, validation_sets  # noqa: E402
from workers.evaluation.model_folders import model_folder_module  # noqa: E402

MANIFEST_PATH = MODEL.manifest_path
MODEL_PATH = MODEL.onnx_path
CARD_PATH = MODEL.card_path
N_TEST = 500
N_EXTERNAL = 400
CHECK_TOLERANCE = 0.02
METRIC_KEYS = (
    "quadratic_weighted_kappa",
    "referable_auc",
    "accuracy",
    "referable_sensitivity",
    "referable_specificity",
)
INTERVAL_KEYS = {  # this script's metric → the stable name `medimg eval` gives it
    "quadratic_weighted_kappa": "qwk",
    "accuracy": "accuracy",
    "referable_auc": "referable_auc",
    "referable_sensitivity": "sensitivity@{point}",
    "referable_specificity": "specificity@{point}",
}
CARD_BEGIN = "<!-- metrics:begin (written by evaluate.py --write) -->"
CARD_END = "<!-- metrics:end -->"


def load_manifest() -> ModelManifest:
    return MODEL.manifest()


def onnx_probabilities(images: np.ndarray, manifest: ModelManifest) -> np.ndarray:
    """Softmax of the logits after the manifest's calibration, as the serving decode computes them."""
    import onnxruntime as ort

    from workers.decoding import activate, calibrated

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(MODEL_PATH), options, providers=["CPUExecutionProvider"])
    input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    logits = np.concatenate([
        session.run([output_name], {input_name: images[i : i + 32].astype(np.float32)})[0]
        for i in range(0, len(images), 32)
    ])
    return activate(calibrated(logits, manifest.calibration), manifest.decoding, axis=1)


def evaluate(n: int | None = None, with_intervals: bool = False, split: str = "test") -> dict:
    """Metrics of the committed model on the first n images (default all N_TEST) of the test split (or of
    another split, "external" for external_fundus.py's set); with their bootstrap intervals if asked (the
    command line always asks)."""
    from sklearn.metrics import cohen_kappa_score, confusion_matrix, roc_auc_score

    manifest = MODEL.checked_manifest()
    n = N_TEST if n is None else n
    images, grades = split_tensors(split, n, manifest.preprocessing)
    probabilities = onnx_probabilities(images, manifest)
    predicted = probabilities.argmax(axis=1)

    referable = grades >= 2
    score = probabilities[:, manifest.decoding.positive_classes].sum(axis=1)
    called = score >= manifest.operating_point().threshold
    return {
        "intervals": intervals(grades, predicted, score, manifest) if with_intervals else None,
        "quadratic_weighted_kappa": float(cohen_kappa_score(grades, predicted, weights="quadratic")),
        "referable_auc": float(roc_auc_score(referable, score)),
        "accuracy": float((predicted == grades).mean()),
        "referable_sensitivity": float(called[referable].mean()),
        "referable_specificity": float((~called[~referable]).mean()),
        "n_images": n,
        "confusion_matrix": confusion_matrix(grades, predicted, labels=range(5)).tolist(),
    }


def intervals(grades: np.ndarray, predicted: np.ndarray, score: np.ndarray, manifest: ModelManifest,
              n_resamples: int | None = None) -> dict:
    """95 % bootstrap intervals over the test images, as `medimg eval` computes them for a site."""
    from workers.evaluation.classification import binary_figures
    from workers.evaluation.intervals import BootstrapSettings, bootstrap_figure

    settings = BootstrapSettings(n_resamples=n_resamples) if n_resamples else BootstrapSettings()
    point = manifest.operating_point()
    everyone = [np.arange(len(grades))]
    figures = {
        "qwk": bootstrap_figure(lambda i: float(cohen_kappa(grades[i], predicted[i])), everyone, settings),
        "accuracy": bootstrap_figure(lambda i: float((grades[i] == predicted[i]).mean()), everyone, settings),
        **binary_figures(grades >= 2, score, {point.name: point.threshold}, settings, prefix="referable_"),
    }
    by_key = {key: figures[name.format(point=point.name)] for key, name in INTERVAL_KEYS.items()}
    return {"figures": by_key, "bootstrap": settings.as_json()}


def cohen_kappa(truth: np.ndarray, predicted: np.ndarray) -> float:
    from sklearn.metrics import cohen_kappa_score

    return cohen_kappa_score(truth, predicted, weights="quadratic")


def _with_interval(results: dict, key: str) -> str:
    ci = results["intervals"]["figures"][key]["ci95"]
    return f"{results[key]:.3f} | {ci[0]:.3f} – {ci[1]:.3f}"


def write(results: dict) -> None:
    manifest = MODEL.checked_manifest()
    seeds = synthetic_fundus.SPLIT_SEEDS
    with model_scripts.edited_manifest(MANIFEST_PATH) as data:
        # The external set's figures are written by --write-sets and stay as they are.
        kept = validation_sets.kept_figures(data["metrics"], [EXTERNAL_SET])
        data["metrics"] = {**{key: round(results[key], 4) for key in METRIC_KEYS}, **kept}
        for point in data["operating_points"]:
            if point["name"] == manifest.default_operating_point:
                point["sensitivity"] = round(results["referable_sensitivity"], 4)
                point["specificity"] = round(results["referable_specificity"], 4)
                for figure in ("sensitivity", "specificity"):
                    ci = results["intervals"]["figures"][f"referable_{figure}"]["ci95"]
                    point[f"{figure}_ci95"] = [round(ci[0], 4), round(ci[1], 4)]
                # Keep train.py's account of how the threshold was chosen (on val); replace where it was measured.
                how_chosen = point["measured_on"].split(";")[0]
                point["measured_on"] = (
                    f"{how_chosen}; sensitivity/specificity measured on the held-out synthetic test split "
                    f"(n={results['n_images']}, seed {seeds['test']})"
                )
    _write_card_table(results, load_manifest())


def _write_card_table(results: dict, manifest: ModelManifest) -> None:
    point = manifest.operating_point()
    lines = [
        CARD_BEGIN,
        f"Held-out synthetic test split: {results['n_images']} images (seed {synthetic_fundus.SPLIT_SEEDS['test']}, "
        "balanced across grades), run through ONNX Runtime (CPUExecutionProvider)"
        + (f", probabilities calibrated by the manifest's temperature {manifest.calibration.temperature}."
           if manifest.calibration else "."),
        "",
        "| Metric | Value | 95 % interval |",
        "|---|---|---|",
        f"| Quadratic weighted kappa (5 grades) | {_with_interval(results, 'quadratic_weighted_kappa')} |",
        f"| Accuracy (5 grades) | {_with_interval(results, 'accuracy')} |",
        f"| Referable DR AUC (grade ≥ 2) | {_with_interval(results, 'referable_auc')} |",
        f"| Referable sensitivity at threshold {point.threshold} | {_with_interval(results, 'referable_sensitivity')} |",
        f"| Referable specificity at threshold {point.threshold} | {_with_interval(results, 'referable_specificity')} |",
        "",
        _interval_note(results),
        "",
        "Confusion matrix (rows: true grade, columns: predicted grade):",
        "",
        "| true \\ predicted | 0 | 1 | 2 | 3 | 4 |",
        "|---|---|---|---|---|---|",
        *[f"| {grade} | " + " | ".join(str(v) for v in row) + " |"
          for grade, row in enumerate(results["confusion_matrix"])],
        CARD_END,
    ]
    model_scripts.write_card_block(CARD_PATH, CARD_BEGIN, CARD_END, "\n".join(lines))


def _interval_note(results: dict) -> str:
    boot = results["intervals"]["bootstrap"]
    return (f"Intervals: bootstrap over the {results['n_images']} images ({boot['n_resamples']} resamples, seed "
            f"{boot['seed']}; referable figures resample referable and non-referable images apart), computed by "
            "`evaluate.py --check` with the code of `medimg eval` (workers/evaluation).")


def drift(results: dict, stored: dict[str, float]) -> list[str]:
    """Metrics recomputed more than CHECK_TOLERANCE from the manifest's (or missing there)."""
    return model_scripts.differences(stored, {key: results[key] for key in METRIC_KEYS}, CHECK_TOLERANCE)


# Read once after version 1 was fixed (issue #21): the model, its threshold and temperature are not changed for it.
EXTERNAL_SET = validation_sets.ValidationSet(
    "external", "External validation set (independently written generator)",
    f"{N_EXTERNAL} photographs of `external_fundus.py` (seeds "
    f"[{model_folder_module('dr-grading-reference', 'external_fundus').EXTERNAL_SEED}, i], "
    "requested grades cycling 0-4, each labelled by the ICDR rules from the lesions painted): distance-field "
    "vessel arcades with a light reflex and venous beading, a two-pigment (melanin, haemoglobin) absorption "
    "colour model with a tigroid choroid, off-centre vignetting, dot-blot and flame haemorrhages, circinate "
    "exudates, loop-tangle neovascularisation, boat-shaped preretinal haemorrhage, chromatic blur, shot noise "
    "and JPEG 55-92 or PNG. Same preprocessing, ONNX model, temperature and operating point as above; never "
    "used for training, calibration or selection.")


def external_notes(internal: dict, external: dict) -> str:
    """The drop from the held-out test split, stated on the card as measured (nothing is tuned to this set)."""
    drops = ", ".join(f"{key} {internal[key]:.3f} → {external[key]:.3f}"
                      for key in ("quadratic_weighted_kappa", "referable_auc", "referable_sensitivity",
                                  "referable_specificity"))
    return (f"Internal (held-out test split) → external: {drops}. Confusion matrix on the external set (rows "
            f"true grade 0-4, columns predicted): {external['confusion_matrix']}.")


def set_figures(results: dict) -> dict[str, dict]:
    return results["intervals"]["figures"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="store the metrics in manifest.json and CARD.md")
    mode.add_argument("--check", action="store_true", help=f"exit 1 if a metric moved by > {CHECK_TOLERANCE}")
    mode.add_argument("--write-sets", action="store_true", help="store the external set's figures")
    parser.add_argument("--n", type=int, default=None, help=f"test images to use (default {N_TEST})")
    parser.add_argument("--n-external", type=int, default=N_EXTERNAL, help="external images to use")
    args = parser.parse_args()

    results = evaluate(args.n, with_intervals=True)
    for key in METRIC_KEYS:
        ci = results["intervals"]["figures"][key]["ci95"]
        print(f"{key:28s} {results[key]:.4f}  95% CI {ci[0]:.4f} - {ci[1]:.4f}")
    print(f"{'n_images':28s} {results['n_images']}")
    external = (evaluate(args.n_external, with_intervals=True, split=EXTERNAL)
                if args.write_sets or args.check else None)
    if external:
        print(json.dumps({"external": set_figures(external), "confusion_matrix": external["confusion_matrix"]},
                         indent=2))
    if args.write:
        write(results)
        print(f"wrote metrics to {MANIFEST_PATH} and {CARD_PATH}")
    if args.write_sets:
        validation_sets.write_all(MANIFEST_PATH, CARD_PATH, {EXTERNAL: EXTERNAL_SET},
                                  {EXTERNAL: set_figures(external)}, external["intervals"]["bootstrap"], "images",
                                  CARD_END, {EXTERNAL: external_notes(results, external)})
    if args.check:
        stored = MODEL.stored_metrics()
        moved = drift(results, stored) + validation_sets.drift(stored, EXTERNAL_SET, set_figures(external),
                                                               CHECK_TOLERANCE)
        sys.exit(model_scripts.report_drift(moved, MANIFEST_PATH))


if __name__ == "__main__":
    main()
