"""Calibrate the DR-grading reference model and choose its referable operating point, on the val split only.

    .venv/bin/python models/dr-grading-reference/calibrate.py   # re-fit both for the committed 1/model.onnx

A temperature T is fitted on the whole val split (500 images) by minimising the negative log-likelihood of
softmax(logits / T); the referable threshold is then chosen on the calibrated referable probability, the one
serving decodes (`workers.decoding.calibrated`). The whole split rather than a half: T is one parameter and the
threshold must be chosen on the probabilities served; the half/half check that T carries over to images it
was not fitted on is `reliability.py`'s. Both are model selection, so the test split is never read here.
No PyTorch needed (train.py calls the same code after training).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # the checkout's code, not an installed copy
    sys.path.insert(0, str(REPO_ROOT))

from workers.evaluation.model_scripts import ModelFolder, edited_manifest  # noqa: E402

MODEL = ModelFolder.of_script(__file__)

import synthetic_fundus  # noqa: E402
from scipy import special, stats  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from split_tensors import cached_split  # noqa: E402

from workers.evaluation.calibration import fit_temperature  # noqa: E402

MODEL_PATH = MODEL.onnx_path
MANIFEST_PATH = MODEL.manifest_path
N_VAL = 500
# Referable DR screening favours sensitivity; the val-split threshold is the highest one reaching this.
# 0.95 rather than 0.90 leaves a margin so the held-out sensitivity stays at or above 0.90.
TARGET_SENSITIVITY = 0.95
POSITIVE_CLASSES = [2, 3, 4]


def referable_threshold(probabilities: np.ndarray, grades: np.ndarray) -> tuple[float, float, float]:
    """Highest threshold on P(grade >= 2) whose val sensitivity reaches TARGET_SENSITIVITY."""
    score = probabilities[:, POSITIVE_CLASSES].sum(axis=1)
    referable = grades >= 2
    positives = np.sort(score[referable])[::-1]
    k = int(np.ceil(TARGET_SENSITIVITY * len(positives)))
    # Round down to 4 decimals so the k-th positive stays at or above the threshold.
    threshold = round(float(np.floor(float(positives[k - 1]) * 1e4)) / 1e4, 4)
    called = score >= threshold
    return threshold, float(called[referable].mean()), float((~called[~referable]).mean())


def onnx_logits(path: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(["logits"], {"image": images[i : i + 64].astype(np.float32)})[0]
                           for i in range(0, len(images), 64)])


def calibrate_on_val(onnx_path: Path, val_x: np.ndarray, val_y: np.ndarray) -> tuple[dict, float, float, float]:
    """Temperature fitted on the whole val split, then the referable threshold chosen on the calibrated
    probabilities (what serving decodes). Both are model selection: val only, never test."""
    logits = onnx_logits(onnx_path, val_x).astype(np.float64)
    # Rounded before use so the threshold is chosen on exactly the probabilities the manifest's value gives.
    temperature = round(fit_temperature(logits, val_y), 4)
    seeds = synthetic_fundus.SPLIT_SEEDS
    calibration = {
        "temperature": temperature,
        "measured_on": (f"fitted on the whole synthetic val split (n={len(val_y)}, seed {seeds['val']}) by minimising "
                        "the negative log-likelihood of softmax(logits / T); see CARD.md"),
    }
    raw, scaled = special.softmax(logits, axis=1), special.softmax(logits / temperature, axis=1)
    referable = val_y >= 2
    raw_score, scaled_score = raw[:, POSITIVE_CLASSES].sum(axis=1), scaled[:, POSITIVE_CLASSES].sum(axis=1)
    # Temperature keeps each image's top class, but a sum over classes 2-4 can change rank between images.
    tau = stats.kendalltau(raw_score, scaled_score).statistic
    print(f"val temperature {temperature}; referable AUC {roc_auc_score(referable, raw_score):.4f} as trained, "
          f"{roc_auc_score(referable, scaled_score):.4f} calibrated; Kendall tau between the two rankings {tau:.4f}; "
          f"top class changed on {int((raw.argmax(1) != scaled.argmax(1)).sum())} images")
    return (calibration, *referable_threshold(scaled, val_y))


def recalibrate(use_cache: bool = True) -> None:
    """Re-fit the temperature and re-choose the referable threshold on val for the committed model, without
    retraining; every other manifest field (quality limits, uncertainty, metrics) is kept."""
    current = MODEL.checked_manifest()  # a model file that is not the manifest's: retrain instead
    val_x, val_y = cached_split("val", N_VAL, current.preprocessing, use_cache)
    calibration, threshold, sensitivity, specificity = calibrate_on_val(MODEL_PATH, val_x, val_y)
    print(f"val threshold {threshold} sensitivity {sensitivity:.3f} specificity {specificity:.3f}")
    with edited_manifest(MANIFEST_PATH) as data:
        data["calibration"] = calibration
        data["operating_points"] = [
            {**point, **referable_point(calibration, threshold, sensitivity, specificity)}
            if point["name"] == "referable" else point
            for point in data["operating_points"]
        ]
    print(f"wrote {MANIFEST_PATH}; run evaluate.py --write to measure the test split with it")


def referable_point(calibration: dict, threshold: float, sensitivity: float, specificity: float) -> dict:
    seeds = synthetic_fundus.SPLIT_SEEDS
    return {
        "name": "referable",
        "threshold": threshold,
        "sensitivity": round(sensitivity, 4),
        "specificity": round(specificity, 4),
        "measured_on": (
            f"threshold on the calibrated referable probability (temperature {calibration['temperature']}) chosen "
            f"on the synthetic val split (n={N_VAL}, seed {seeds['val']}) as the highest reaching >= "
            f"{TARGET_SENSITIVITY:.2f} referable sensitivity; sensitivity/specificity measured "
            f"on that val split (evaluate.py --write replaces them with the test split's)"
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-cache", action="store_true", help="regenerate the val tensors instead of reusing data/")
    recalibrate(not parser.parse_args().no_cache)


if __name__ == "__main__":
    main()
