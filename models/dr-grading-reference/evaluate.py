"""Evaluate the committed DR-grading reference model on the held-out synthetic test split.

    .venv/bin/python models/dr-grading-reference/evaluate.py           # print the metrics
    .venv/bin/python models/dr-grading-reference/evaluate.py --write   # store them in manifest.json and CARD.md
    .venv/bin/python models/dr-grading-reference/evaluate.py --check   # exit 1 if they drift from the manifest

The test images go through the manifest's preprocessing (the serving `preprocess_fundus`) and the committed
`1/model.onnx` through ONNX Runtime, exactly as the service would run them. The operating-point threshold
is read from the manifest; it was chosen on the val split by train.py, never on this split.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
for _path in (str(REPO_ROOT), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import synthetic_fundus  # noqa: E402
from app.model_repository import file_sha256  # noqa: E402
from app.schemas.manifest import ModelManifest  # noqa: E402
from split_tensors import split_tensors  # noqa: E402

VERSION_DIR = HERE / "1"
MANIFEST_PATH = VERSION_DIR / "manifest.json"
MODEL_PATH = VERSION_DIR / "model.onnx"
CARD_PATH = VERSION_DIR / "CARD.md"
N_TEST = 500
CHECK_TOLERANCE = 0.02
METRIC_KEYS = (
    "quadratic_weighted_kappa",
    "referable_auc",
    "accuracy",
    "referable_sensitivity",
    "referable_specificity",
)
CARD_BEGIN = "<!-- metrics:begin (written by evaluate.py --write) -->"
CARD_END = "<!-- metrics:end -->"


def load_manifest() -> ModelManifest:
    return ModelManifest.model_validate_json(MANIFEST_PATH.read_text())


def model_sha256() -> str:
    return file_sha256(MODEL_PATH)


def onnx_probabilities(images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(MODEL_PATH), options, providers=["CPUExecutionProvider"])
    input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    logits = np.concatenate([
        session.run([output_name], {input_name: images[i : i + 32].astype(np.float32)})[0]
        for i in range(0, len(images), 32)
    ])
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def evaluate(n: int | None = None) -> dict:
    """Metrics of the committed model on the first n images (default all N_TEST) of the test split."""
    from sklearn.metrics import cohen_kappa_score, confusion_matrix, roc_auc_score

    manifest = load_manifest()
    if model_sha256() != manifest.sha256:
        raise RuntimeError(f"{MODEL_PATH} does not match the sha256 in {MANIFEST_PATH}")
    n = N_TEST if n is None else n
    images, grades = split_tensors("test", n, manifest.preprocessing)
    probabilities = onnx_probabilities(images)
    predicted = probabilities.argmax(axis=1)

    referable = grades >= 2
    score = probabilities[:, manifest.decoding.positive_classes].sum(axis=1)
    called = score >= manifest.operating_point().threshold
    return {
        "quadratic_weighted_kappa": float(cohen_kappa_score(grades, predicted, weights="quadratic")),
        "referable_auc": float(roc_auc_score(referable, score)),
        "accuracy": float((predicted == grades).mean()),
        "referable_sensitivity": float(called[referable].mean()),
        "referable_specificity": float((~called[~referable]).mean()),
        "n_images": n,
        "confusion_matrix": confusion_matrix(grades, predicted, labels=range(5)).tolist(),
    }


def write(results: dict) -> None:
    manifest = load_manifest()
    if model_sha256() != manifest.sha256:
        raise RuntimeError(f"{MODEL_PATH} does not match the sha256 in {MANIFEST_PATH}; retrain or fix it first")
    data = manifest.model_dump(mode="json")
    data["metrics"] = {key: round(results[key], 4) for key in METRIC_KEYS}
    seeds = synthetic_fundus.SPLIT_SEEDS
    for point in data["operating_points"]:
        if point["name"] == manifest.default_operating_point:
            point["sensitivity"] = round(results["referable_sensitivity"], 4)
            point["specificity"] = round(results["referable_specificity"], 4)
            # Keep train.py's account of how the threshold was chosen (on val); replace where it was measured.
            how_chosen = point["measured_on"].split(";")[0]
            point["measured_on"] = (
                f"{how_chosen}; sensitivity/specificity measured on the held-out synthetic test split "
                f"(n={results['n_images']}, seed {seeds['test']})"
            )
    validated = ModelManifest.model_validate(data)
    MANIFEST_PATH.write_text(json.dumps(validated.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n")
    _write_card_table(results, validated)


def _write_card_table(results: dict, manifest: ModelManifest) -> None:
    point = manifest.operating_point()
    lines = [
        CARD_BEGIN,
        f"Held-out synthetic test split: {results['n_images']} images (seed {synthetic_fundus.SPLIT_SEEDS['test']}, "
        "balanced across grades), run through ONNX Runtime (CPUExecutionProvider).",
        "",
        "| Metric | Value |",
        "|---|---|",
        f"| Quadratic weighted kappa (5 grades) | {results['quadratic_weighted_kappa']:.3f} |",
        f"| Accuracy (5 grades) | {results['accuracy']:.3f} |",
        f"| Referable DR AUC (grade ≥ 2) | {results['referable_auc']:.3f} |",
        f"| Referable sensitivity at threshold {point.threshold} | {results['referable_sensitivity']:.3f} |",
        f"| Referable specificity at threshold {point.threshold} | {results['referable_specificity']:.3f} |",
        "",
        "Confusion matrix (rows: true grade, columns: predicted grade):",
        "",
        "| true \\ predicted | 0 | 1 | 2 | 3 | 4 |",
        "|---|---|---|---|---|---|",
        *[f"| {grade} | " + " | ".join(str(v) for v in row) + " |"
          for grade, row in enumerate(results["confusion_matrix"])],
        CARD_END,
    ]
    card = CARD_PATH.read_text()
    pattern = re.compile(re.escape(CARD_BEGIN) + ".*?" + re.escape(CARD_END), re.DOTALL)
    if not pattern.search(card):
        raise RuntimeError(f"{CARD_PATH} has no metrics section between {CARD_BEGIN!r} and {CARD_END!r}")
    CARD_PATH.write_text(pattern.sub(lambda _: "\n".join(lines), card))


def drift(results: dict, manifest: ModelManifest) -> dict[str, tuple[float | None, float]]:
    """Metrics whose recomputed value is more than CHECK_TOLERANCE from the manifest's (or missing there)."""
    out = {}
    for key in METRIC_KEYS:
        stored = manifest.metrics.get(key)
        if stored is None or abs(stored - results[key]) > CHECK_TOLERANCE:
            out[key] = (stored, results[key])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="store the metrics in manifest.json and CARD.md")
    mode.add_argument("--check", action="store_true", help=f"exit 1 if a metric moved by > {CHECK_TOLERANCE}")
    parser.add_argument("--n", type=int, default=None, help=f"test images to use (default {N_TEST})")
    args = parser.parse_args()

    results = evaluate(args.n)
    for key in METRIC_KEYS:
        print(f"{key:28s} {results[key]:.4f}")
    print(f"{'n_images':28s} {results['n_images']}")
    if args.write:
        write(results)
        print(f"wrote metrics to {MANIFEST_PATH} and {CARD_PATH}")
    if args.check:
        moved = drift(results, load_manifest())
        for key, (stored, now) in moved.items():
            print(f"DRIFT {key}: manifest {stored} now {now:.4f}", file=sys.stderr)
        sys.exit(1 if moved else 0)


if __name__ == "__main__":
    main()
