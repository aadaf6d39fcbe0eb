"""The DR card's quality-gate, uncertainty and calibration figures, from the validation split only.

    .venv/bin/python models/dr-grading-reference/reliability.py            # print the figures (about 2 min)
    .venv/bin/python models/dr-grading-reference/reliability.py --figure   # also draw figures/reliability.png (matplotlib)

On the 500 validation photos (never the test split) it measures:
- the quality gate (`workers.quality.fundus`) at the manifest's limits: the share judged ungradable, and the
  share of degraded copies refused (defocused: a Gaussian blur of 2.5 px at the model's 224 px; underexposed:
  pixels x 0.3);
- test-time augmentation as the pipeline runs it (`augmented_spread`): the spread of the referable
  probability and how often it flags low confidence, beside the referable errors at the operating point;
- calibration: expected calibration error (15 equal-width bins of the top-class probability) before and after
  a temperature fitted by minimising the negative log-likelihood on the first half of the split, measured on
  the second half (does a temperature carry over to images it was not fitted on?); then before and after the
  manifest's temperature (fitted on the whole split by calibrate.py) on the whole split, the diagram drawn.
  Nothing is retrained. The TTA and error figures use the manifest's calibration and operating point.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # the checkout's code, not an installed copy
    sys.path.insert(0, str(REPO_ROOT))

from workers.evaluation.model_scripts import ModelFolder  # noqa: E402

MODEL = ModelFolder.of_script(__file__)

import synthetic_fundus  # noqa: E402
from PIL import Image, ImageFilter  # noqa: E402

from app.model_repository import load_model_version  # noqa: E402
from workers.imaging.fundus import fit_to_model, to_model_tensor  # noqa: E402
from workers.onnx import load_model  # noqa: E402
from workers.pipelines.dr_grading import augmented_spread  # noqa: E402
from app.schemas.options import DRGradingOptions  # noqa: E402
from workers.quality.fundus import check_fundus  # noqa: E402
from workers.evaluation.calibration import fit_temperature  # noqa: E402

VERSION_DIR = MODEL.version_dir
N_VAL = 500
BINS = 15


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def reliability(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """ECE, and per bin: mean confidence, accuracy, count (top-class probability, equal-width bins)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, BINS + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, BINS - 1)
    count = np.bincount(which, minlength=BINS)
    conf = np.bincount(which, confidence, minlength=BINS) / np.maximum(count, 1)
    acc = np.bincount(which, correct.astype(float), minlength=BINS) / np.maximum(count, 1)
    ece = float(np.sum(count / len(labels) * np.abs(acc - conf)))
    return ece, conf, acc, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figure", action="store_true", help="draw figures/reliability.png")
    parser.add_argument("-n", type=int, default=N_VAL)
    args = parser.parse_args()
    model = load_model(load_model_version(VERSION_DIR), ["CPUExecutionProvider"])
    manifest = model.manifest
    limits = manifest.quality.fundus
    threshold = manifest.operating_point().threshold
    logits, labels, refused, spreads, flagged, wrong = [], [], {"original": 0, "defocused": 0, "underexposed": 0}, [], [], []
    for item in synthetic_fundus.iter_split("val", args.n):
        rgb = item.rgb
        side = rgb.shape[1] / manifest.preprocessing.target_size[1] * 2.5
        copies = {"original": rgb, "defocused": np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(side))),
                  "underexposed": (rgb * 0.3).astype(np.uint8)}
        for name, copy in copies.items():
            refused[name] += not check_fundus(copy, limits).gradable
        graded = fit_to_model(rgb, manifest.preprocessing)
        tensor = to_model_tensor(graded, manifest.preprocessing)
        raw = model.run({manifest.inputs[0].name: tensor[None]})[manifest.outputs[0].name][0]
        logits.append(raw)
        labels.append(item.grade)
        spread = augmented_spread(graded, raw, model, DRGradingOptions())
        spreads.append(spread.probability_spread)
        flagged.append(spread.low_confidence)
        referable = softmax(raw[None], manifest.calibration.temperature if manifest.calibration else 1.0)[0][2:].sum()
        wrong.append((referable >= threshold) != (item.grade >= 2))
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels)
    spreads, flagged, wrong = np.asarray(spreads), np.asarray(flagged), np.asarray(wrong)
    n = len(labels)
    print(f"validation photos: {n}")
    for name, count in refused.items():
        print(f"quality gate: {name} judged ungradable {count}/{n} ({count / n:.1%})")
    print(f"TTA referable-probability spread: median {np.median(spreads):.4f}, p95 {np.percentile(spreads, 95):.4f}, "
          f"max {spreads.max():.4f}; low_confidence {flagged.sum()}/{n}; referable errors {wrong.sum()}, "
          f"of them flagged {int((wrong & flagged).sum())}")
    half = n // 2
    temperature = fit_temperature(logits[:half], labels[:half])
    before = reliability(softmax(logits[half:]), labels[half:])
    after = reliability(softmax(logits[half:], temperature), labels[half:])
    print(f"temperature fitted on val[0:{half}]: {temperature:.3f}; on val[{half}:{n}] ECE {before[0]:.4f} -> "
          f"{after[0]:.4f}")
    shipped = manifest.calibration.temperature if manifest.calibration else 1.0
    before, after = reliability(softmax(logits), labels), reliability(softmax(logits, shipped), labels)
    print(f"manifest temperature {shipped} (fitted on all of val by calibrate.py): on val[0:{n}] ECE "
          f"{before[0]:.4f} -> {after[0]:.4f} (in-sample)")
    if args.figure:
        draw(before, after, shipped, MODEL.path / "figures" / "reliability.png")


def draw(before, after, temperature: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4.2, 4.2), dpi=80)
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    for (ece, conf, acc, count), label in ((before, "as trained"), (after, f"temperature {temperature:.2f}")):
        used = count > 0
        axis.plot(conf[used], acc[used], marker="o", label=f"{label} (ECE {ece:.3f})")
    axis.set_xlabel("top-class probability")
    axis.set_ylabel("accuracy")
    axis.set_title("DR reference model, validation split")
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(exist_ok=True)
    figure.savefig(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
