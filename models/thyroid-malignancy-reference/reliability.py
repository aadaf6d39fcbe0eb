"""The thyroid card's calibration figure, from the validation split only (never the test split).

    .venv/bin/python models/thyroid-malignancy-reference/reliability.py      # about a minute for 400 frames

Each val frame goes through the serving steps (`evaluate.score_item`: region, segmentation, classifier), then
the malignancy probability's expected calibration error (10 equal-width bins, `workers.evaluation.calibration`,
the bins `medimg eval` reports) against the drawn label; and, to see whether a temperature would help, one
fitted on the first half of the split (negative log-likelihood) and measured on the second half.
Frames where segmentation finds nothing are left out (the pipeline answers no probability for them).
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

ModelFolder.of_script(__file__)  # the modules beside this one, importable by name

import synthetic_us  # noqa: E402
from evaluate import load_cascade, score_item  # noqa: E402

from workers.evaluation.calibration import expected_calibration_error, fit_temperature  # noqa: E402

N_VAL = 400


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=N_VAL)
    args = parser.parse_args()
    classifier, segmenter = load_cascade()
    if classifier.manifest.calibration is not None:
        raise SystemExit("the manifest already carries a calibration; this measures the model as trained")
    rows = [(score_item(item, classifier, segmenter), item.malignant)
            for item in (synthetic_us.split_item("val", i) for i in range(args.n))]
    probability = np.array([scored["probability"] for scored, _ in rows if scored["found"]])
    label = np.array([malignant for scored, malignant in rows if scored["found"]], dtype=int)
    n, half = len(label), len(label) // 2
    print(f"validation frames: {args.n}, with a nodule found: {n}, malignant {label.mean():.3f}, "
          f"mean probability {probability.mean():.3f}")
    print(f"ECE (10 bins) on all {n}: {expected_calibration_error(label, probability):.4f}")
    # A sigmoid is a two-class softmax of (0, logit), so the same temperature fit applies.
    clipped = np.clip(probability, 1e-6, 1 - 1e-6)
    logits = np.stack([np.zeros(n), np.log(clipped / (1 - clipped))], axis=1)
    temperature = fit_temperature(logits[:half], label[:half])
    scaled = 1.0 / (1.0 + np.exp(-logits[half:, 1] / temperature))
    print(f"temperature fitted on val[0:{half}]: {temperature:.3f}; on val[{half}:{n}] ECE "
          f"{expected_calibration_error(label[half:], probability[half:]):.4f} -> "
          f"{expected_calibration_error(label[half:], scaled):.4f}")


if __name__ == "__main__":
    main()
