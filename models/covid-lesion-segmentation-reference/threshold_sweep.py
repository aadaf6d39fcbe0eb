"""Would a lesion-probability threshold serve better than the argmax? The figures of CARD.md's threshold paragraph.

    .venv/bin/python models/covid-lesion-segmentation-reference/threshold_sweep.py        # ~2 min on 2 cores

Instead of each voxel's most probable class, a voxel may be called lesion when P(ground-glass) +
P(consolidation) >= t, and then take the more probable of the two. The threshold is judged on the
validation split (seeds 45000000+i, drawn as `train.py` draws its scans), never on the test split: the rule
is the lowest mean total-volume error (scans with >= 5 ml of lesion) without a lower any-lesion Dice than the
argmax's. Every candidate goes through the served decode (small components removed, lesions kept where they
touch the lungs).
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

from evaluate import MIN_VOLUME_ML, N_VALIDATION_SCANS  # noqa: E402
from train import VERSION_DIR, make_case  # noqa: E402

THRESHOLDS = (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.475, 0.5, 0.55, 0.6)


def lesion_probabilities(case, manifest, run) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The served argmax labels, P(lesion) and where consolidation outweighs ground-glass, on the source grid."""
    from workers.pipelines.covid.inference import slice_probabilities

    argmax = np.empty(case.hu.shape, np.uint8)
    lesion = np.empty(case.hu.shape, np.float32)
    consolidation = np.empty(case.hu.shape, bool)
    for index, probability in slice_probabilities(case.hu, case.grid.spacing, manifest, run):
        argmax[index] = np.argmax(probability, axis=0)
        lesion[index] = probability[1] + probability[2]
        consolidation[index] = probability[2] > probability[1]
    return argmax, lesion, consolidation


def sweep(n_scans: int, manifest, run) -> dict[str, dict[str, float]]:
    from workers.imaging.lungs import LungMask, segment_lungs
    from workers.pipelines.covid.decode import decode_labels

    candidates = ["argmax", *map(str, THRESHOLDS)]
    errors: dict[str, list[float]] = {c: [] for c in candidates}
    overlap = {c: [0, 0] for c in candidates}  # pooled any-lesion intersection, sum of sizes
    for index in range(n_scans):
        case = make_case("validation", index)
        argmax, lesion, consolidation = lesion_probabilities(case, manifest, run)
        lungs = segment_lungs(case.hu, case.grid.affine, case.grid.spacing)
        truth = case.labels > 0
        voxel_ml = float(np.prod(case.grid.spacing)) / 1000.0
        for candidate in candidates:
            if candidate == "argmax":
                raw = argmax.copy()
            else:
                raw = np.where(lesion >= float(candidate), np.where(consolidation, 2, 1), 0).astype(np.uint8)
            labels, _ = decode_labels(raw, LungMask(lungs.labels.copy()), case.grid.affine, manifest)
            found = labels > 0
            overlap[candidate][0] += int((found & truth).sum())
            overlap[candidate][1] += int(found.sum() + truth.sum())
            if truth.sum() * voxel_ml >= MIN_VOLUME_ML:
                errors[candidate].append((int(found.sum()) - int(truth.sum())) / int(truth.sum()))
        print(f"validation scan {index}: {case.hu.shape}, lesion {truth.sum() * voxel_ml:.1f} ml, argmax error "
              f"{errors['argmax'][-1] if truth.sum() * voxel_ml >= MIN_VOLUME_ML else float('nan'):+.3f}",
              file=sys.stderr, flush=True)
    table = {}
    for candidate in candidates:
        e = np.asarray(errors[candidate])
        table[candidate] = {
            "mean_abs_volume_error": float(np.abs(e).mean()), "bias": float(e.mean()),
            "max_abs_volume_error": float(np.abs(e).max()), "within_10_percent": int((np.abs(e) <= 0.10).sum()),
            "scans": len(e), "dice_lesion": 2 * overlap[candidate][0] / overlap[candidate][1],
        }
    return table


def choose(table: dict[str, dict[str, float]]) -> str:
    """The rule, fixed before the test split is looked at."""
    floor = table["argmax"]["dice_lesion"]
    allowed = [c for c, row in table.items() if row["dice_lesion"] >= floor]
    return min(allowed, key=lambda c: table[c]["mean_abs_volume_error"])


def main() -> int:
    from app.model_repository import load_model_version
    from workers.onnx import load_model
    from workers.pipelines.covid.inference import onnx_runner

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version-dir", type=Path, default=VERSION_DIR, help="another version folder (experiments)")
    args = parser.parse_args()
    model = load_model(load_model_version(args.version_dir))
    manifest, run = model.manifest, onnx_runner(model)
    table = sweep(N_VALIDATION_SCANS, manifest, run)
    print(f"validation split, {N_VALIDATION_SCANS} scans ({table['argmax']['scans']} with >= {MIN_VOLUME_ML:g} ml "
          "of lesion):")
    print("candidate  mean |error|   bias    max |error|  within 10 %   Dice (any lesion)")
    for candidate, row in table.items():
        print(f"{candidate:>9}  {row['mean_abs_volume_error']:11.4f}  {row['bias']:+.4f}  "
              f"{row['max_abs_volume_error']:10.3f}  {row['within_10_percent']:5d}/{row['scans']:<5d}  "
              f"{row['dice_lesion']:.4f}")
    print(f"chosen by the rule: {choose(table)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
