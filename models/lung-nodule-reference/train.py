"""Train the lung-nodule reference detector on synthetic chest CT and export it to ONNX.

    .venv/bin/python models/lung-nodule-reference/train.py --threads 1

Measured on 2 shared CPU cores: generating the 450 regions took 14.5 min under heavy load from other work
(about 5 min when the cores are free; cached in data/ afterwards); training 600 steps, export and val took
14.8 min with one torch thread (one thread beat two while other processes oversubscribed the cores).

1. Generates training regions: a random chest phantom, a ~110 mm region of it "scanned" at a random
   acquisition (0.5–1.0 mm pixels, 0.625–5 mm slices, orientation, noise), then passed through the serving
   preprocessing (`workers/imaging/ct_resample.py`: resample to 1.5 mm, HU window) — the model sees exactly
   what the service feeds it. The target is each voxel's fraction inside a nodule.
2. Trains `network.NoduleNet` (3D U-Net, ~0.3 M parameters) on random 40³ crops with flips.
3. Exports `1/model.onnx` (opset 17, dynamic batch, 64³ patches), runs the serving pipeline's sliding
   window and decoding on the synthetic val scans, and picks the default operating point there.
4. Writes `1/manifest.json`. Held-out metrics (FROC, CPM) are added by `evaluate.py --write`.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
for _path in (str(REPO_ROOT), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import synthetic_ct as sc  # noqa: E402
from app.model_repository import file_sha256  # noqa: E402
from app.schemas.manifest import ModelManifest  # noqa: E402
from workers.imaging.ct_resample import resample_to_spacing, window  # noqa: E402

MODEL_ID = "lung-nodule-reference"
VERSION_DIR = HERE / "1"
CACHE_DIR = HERE / "data"  # git-ignored (models/*/data/)
SEED = 4321
SPLIT_SEEDS = {"train": 10_000_000, "val": 20_000_000, "test": 30_000_000}
TARGET_SPACING = (1.5, 1.5, 1.5)  # z, y, x mm
WINDOW_HU = (-1000.0, 400.0)
PATCH = (64, 64, 64)  # serving patch, voxels at TARGET_SPACING
PATCH_OVERLAP = 0.25
CROP = 40  # training crop (a multiple of 8)
REGION_MM = 110.0
N_REGIONS = 450
STEPS = 600
BATCH = 6
CANDIDATE_THRESHOLD = 0.2
REFERENCE_NODULE_VOXELS = 4 / 3 * 3.14159 * 5.0**3 / 1.5**3  # a 10 mm nodule at 1.5 mm voxels
MAX_SIZE_WEIGHT = 30.0
MIN_COMPONENT_VOXELS = 2
NMS_RADIUS_MM = 5.0
N_VAL_SCANS = 8
OPERATING_FP_PER_SCAN = 1.0


def _sources_digest() -> str:
    digest = hashlib.sha256()
    for path in (HERE / "synthetic_ct.py", REPO_ROOT / "workers/imaging/ct_resample.py"):
        digest.update(path.read_bytes())
    digest.update(repr((TARGET_SPACING, WINDOW_HU, REGION_MM)).encode())
    return digest.hexdigest()[:12]


def random_acquisition(rng: np.random.Generator) -> dict:
    return {
        "pixel_spacing": float(rng.uniform(0.5, 1.0)),
        "slice_spacing": float(rng.choice([0.625, 1.0, 1.25, 2.0, 2.5, 3.0, 5.0])),
        "orientation": str(rng.choice(list(sc.ORIENTATIONS), p=[0.55, 0.25, 0.1, 0.1])),
        "rotation_deg": float(rng.uniform(-15, 15)) if rng.random() < 0.2 else 0.0,
    }


def training_region(index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input uint8-scaled window [D,H,W] as float16, target occupancy float16, nodule centres in voxels)."""
    rng = np.random.default_rng(SPLIT_SEEDS["train"] + index)
    acquisition = random_acquisition(rng)
    anatomy = sc.make_phantom(rng, n_nodules=0)
    for _ in range(200):
        centre, axes = anatomy.lungs[int(rng.integers(0, 2))]
        point = centre + rng.uniform(-0.85, 0.85, 3) * axes
        if anatomy.inside_lung(point, margin=8):
            break
    px, dz = acquisition["pixel_spacing"], acquisition["slice_spacing"]
    grid = sc.grid_around(point, int(REGION_MM / px), px, max(2, int(REGION_MM / dz)), dz,
                          acquisition["orientation"], acquisition["rotation_deg"])
    n = int(rng.choice([0, 1, 2, 3], p=[0.15, 0.4, 0.3, 0.15]))
    sc._place_nodules(anatomy, rng, n, None, 0.3, 3.0, 30.0, grid)
    hu = sc.acquire(sc.render(anatomy, grid), rng)
    positions = np.arange(grid.shape[0]) * grid.spacing[2]
    resampled = resample_to_spacing(hu, grid.spacing, positions, TARGET_SPACING)
    x = window(resampled.volume, WINDOW_HU)
    target_grid = sc.Grid(shape=x.shape, origin=grid.origin, row_dir=grid.row_dir, col_dir=grid.col_dir,
                          spacing=(TARGET_SPACING[2], TARGET_SPACING[1], TARGET_SPACING[0]))
    y = sc.nodule_occupancy(anatomy, target_grid)
    centres = np.array([target_grid.to_voxel(np.asarray(n.centre_mm))[::-1] for n in anatomy.nodules]).reshape(-1, 3)
    return x.astype(np.float16), y.astype(np.float16), centres.astype(np.float32)


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"


def generate_regions(n: int, processes: int, log) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    path = CACHE_DIR / f"regions-{n}-{_sources_digest()}.npz"
    if path.exists():
        with np.load(path, allow_pickle=True) as data:
            return list(data["regions"])
    started = time.time()
    regions = []
    with multiprocessing.get_context("fork").Pool(processes, initializer=_init_worker) as pool:
        for i, region in enumerate(pool.imap(training_region, range(n), chunksize=4)):
            regions.append(region)
            if (i + 1) % 100 == 0:
                log(f"generated {i + 1}/{n} regions ({time.time() - started:.0f}s)")
    CACHE_DIR.mkdir(exist_ok=True)
    array = np.empty(len(regions), dtype=object)
    array[:] = regions
    np.savez(path, regions=array)
    return regions


def sample_batch(regions, rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    while len(xs) < batch:
        x, y, centres = regions[int(rng.integers(0, len(regions)))]
        if min(x.shape) < CROP:
            pad = [(0, max(0, CROP - s)) for s in x.shape]
            x, y = np.pad(x, pad), np.pad(y, pad)
        if len(centres) and rng.random() < 0.7:
            centre = centres[int(rng.integers(0, len(centres)))] + rng.uniform(-CROP / 3, CROP / 3, 3)
            start = np.round(centre - CROP / 2).astype(int)
        else:
            start = rng.integers(0, np.array(x.shape) - CROP + 1)
        start = np.clip(start, 0, np.array(x.shape) - CROP)
        region = tuple(slice(s, s + CROP) for s in start)
        cx, cy = x[region].astype(np.float32), y[region].astype(np.float32)
        for axis in range(3):
            if rng.random() < 0.5:
                cx, cy = np.flip(cx, axis), np.flip(cy, axis)
        if rng.random() < 0.5:
            cx, cy = cx.transpose(0, 2, 1), cy.transpose(0, 2, 1)
        cx = cx * rng.uniform(0.95, 1.05) + rng.uniform(-0.02, 0.02)
        xs.append(np.ascontiguousarray(cx))
        ys.append(np.ascontiguousarray(cy))
    return np.stack(xs)[:, None], np.stack(ys)[:, None], np.stack([size_weights(y) for y in ys])[:, None]


def size_weights(target: np.ndarray) -> np.ndarray:
    """Per-voxel loss weights that give a small nodule as much say as a large one: each nodule's voxels
    (and a rim) are weighted by a 10 mm nodule's volume over its own, from 1 up to MAX_SIZE_WEIGHT."""
    from scipy import ndimage

    weights = np.ones(target.shape, np.float32)
    labels, count = ndimage.label(target > 0.05)
    if not count:
        return weights
    sizes = ndimage.sum_labels(target, labels, index=np.arange(1, count + 1))
    per_label = np.concatenate([[1.0], np.clip(REFERENCE_NODULE_VOXELS / np.maximum(sizes, 1e-3), 1.0,
                                               MAX_SIZE_WEIGHT)]).astype(np.float32)
    grown = ndimage.grey_dilation(labels, size=(3, 3, 3))
    return per_label[grown]


def train(model, regions, steps: int, log) -> None:
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(SEED)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    started, running = time.time(), 0.0
    model.train()
    for step in range(steps):
        x, y, w = (torch.from_numpy(a) for a in sample_batch(regions, rng, BATCH))
        logits = model(x)
        bce = F.binary_cross_entropy_with_logits(logits, y, weight=w * (1 + 2 * y))
        p = torch.sigmoid(logits)
        dims = (1, 2, 3, 4)
        dice = 1 - ((2 * (p * y).sum(dims) + 1) / (p.sum(dims) + y.sum(dims) + 1)).mean()
        loss = bce + 0.5 * dice
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if (step + 1) % 50 == 0:
            log(f"step {step + 1}/{steps} loss {running:.4f} ({time.time() - started:.0f}s)")


def export_onnx(model, path: Path) -> None:
    import torch

    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model, (torch.zeros(1, 1, *PATCH),), str(path), dynamo=False, opset_version=17,
        input_names=["ct"], output_names=["nodule_logits"],
        dynamic_axes={"ct": {0: "batch"}, "nodule_logits": {0: "batch"}},
    )


def build_manifest(onnx_path: Path, threshold: float, sensitivity: float | None, measured_on: str,
                   previous_metrics: dict[str, float], n_regions: int, steps: int) -> ModelManifest:
    import torch

    return ModelManifest(
        id=MODEL_ID,
        version=1,
        task="lung-nodule-detection",
        title="Pulmonary nodule detection on chest CT, synthetic reference model",
        intended_use=(
            "Research use only: a reference model for exercising the CT pipeline end to end (series assembly, "
            "geometry, sliding-window 3D inference, findings in patient coordinates). Trained and evaluated only "
            "on synthetic phantoms; not for clinical use or any diagnostic decision."
        ),
        research_use_only=True,
        sha256=file_sha256(onnx_path),
        accepts={
            "formats": ["dicom"],
            "modalities": ["CT"],
            "samples_per_pixel": [1],
            "min_rows": 64,
            "min_columns": 64,
            "min_instances": 1,
            "volume": True,
        },
        inputs=[{"name": "ct", "dtype": "float32", "layout": "NCDHW", "shape": ["batch", 1, *PATCH]}],
        outputs=[{"name": "nodule_logits", "dtype": "float32", "layout": "NCDHW", "shape": ["batch", 1, *PATCH]}],
        preprocessing={
            "color_order": "GRAY",
            "target_spacing_mm": TARGET_SPACING,
            "window_hu": WINDOW_HU,
            "patch_size": PATCH,
            "patch_overlap": PATCH_OVERLAP,
        },
        decoding={
            "kind": "segmentation-components",
            "activation": "sigmoid",
            "candidate_threshold": CANDIDATE_THRESHOLD,
            "min_component_voxels": MIN_COMPONENT_VOXELS,
            "nms_radius_mm": NMS_RADIUS_MM,
        },
        class_names=["background", "nodule"],
        operating_points=[{
            "name": "1-fp-per-scan",
            "threshold": threshold,
            "sensitivity": sensitivity,
            "measured_on": measured_on,
        }],
        default_operating_point="1-fp-per-scan",
        metrics=previous_metrics,
        provenance={
            "created": datetime.date.today().isoformat(),
            "framework": f"PyTorch {torch.__version__.split('+')[0]} CPU → ONNX opset 17",
            "training_data": (
                f"synthetic chest CT from models/{MODEL_ID}/synthetic_ct.py: {n_regions} regions of "
                f"{REGION_MM:.0f} mm (seeds {SPLIT_SEEDS['train']}+i), random acquisition (0.5-1.0 mm pixels, "
                "0.625-5 mm slices, HFS/FFS/HFP/FFP, in-plane rotation, noise 8-35 HU), 0-3 solid or part-solid "
                f"nodules of 3-30 mm each; {steps} steps of {BATCH} crops of {CROP}^3 voxels"
            ),
            "training_script": f"models/{MODEL_ID}/train.py",
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regions", type=int, default=N_REGIONS)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--processes", type=int, default=2, help="processes generating the regions")
    parser.add_argument("--val-scans", type=int, default=N_VAL_SCANS)
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads (1 trains faster when other work oversubscribes the cores)")
    args = parser.parse_args()

    import torch

    from network import NoduleNet

    started = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - started:6.0f}s] {message}", flush=True)

    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    regions = generate_regions(args.regions, args.processes, log)
    n_nodules = sum(len(r[2]) for r in regions)
    log(f"{len(regions)} regions ready, {n_nodules} nodules, shape e.g. {regions[0][0].shape}")

    model = NoduleNet()
    log(f"model parameters: {sum(p.numel() for p in model.parameters()):,}")
    train(model, regions, args.steps, log)
    del regions

    onnx_path = VERSION_DIR / "model.onnx"
    export_onnx(model, onnx_path)
    log(f"exported {onnx_path} ({onnx_path.stat().st_size / 1e6:.2f} MB)")

    import evaluate

    previous = {}
    manifest_path = VERSION_DIR / "manifest.json"
    if manifest_path.exists():
        previous = {}  # metrics belong to the old weights; evaluate.py --write measures the new ones
    provisional = build_manifest(onnx_path, 0.5, None, "provisional", previous, args.regions, args.steps)
    candidates = evaluate.collect(provisional, "val", args.val_scans, onnx_path=onnx_path, log=log)
    threshold, sensitivity, fp_rate = evaluate.threshold_at_fp_rate(candidates, OPERATING_FP_PER_SCAN)
    measured_on = (
        f"threshold chosen on {args.val_scans} synthetic val scans (seeds {SPLIT_SEEDS['val']}+i) as the lowest "
        f"with at most {OPERATING_FP_PER_SCAN:g} false positive per scan ({fp_rate:.2f}); sensitivity from that val "
        "split until evaluate.py --write replaces it with the test split's"
    )
    manifest = build_manifest(onnx_path, threshold, round(sensitivity, 4), measured_on, previous, args.regions,
                              args.steps)
    manifest_path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n")
    log(f"val: threshold {threshold} sensitivity {sensitivity:.3f} at {fp_rate:.2f} FP/scan; wrote {manifest_path}; "
        f"total wall time {(time.time() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
