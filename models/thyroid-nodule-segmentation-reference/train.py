"""Train the thyroid nodule segmentation reference model (stage 1 of the cascade) and export it to ONNX.

    .venv/bin/python models/thyroid-nodule-segmentation-reference/train.py

Frames come from `models/thyroid-malignancy-reference/synthetic_us.py` (the generator both models share).
Each frame goes through the serving preprocessing (`workers.imaging.ultrasound`: imaging-region detection,
resize to 96x96), a small U-Net learns the nodule mask with BCE + soft Dice, and `1/model.onnx` plus
`1/manifest.json` are written. Held-out Dice is added to the manifest by `evaluate.py --write`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # the checkout's code, not an installed copy
    sys.path.insert(0, str(REPO_ROOT))

from workers.evaluation.model_scripts import ModelFolder, write_new_manifest  # noqa: E402

# The frames are the classifier's generators' (its folder holds them).
MODEL = ModelFolder.of_script(__file__, imports_from=ModelFolder.named("thyroid-malignancy-reference").path)
HERE = MODEL.path

import synthetic_us  # noqa: E402
from app.model_repository import file_sha256  # noqa: E402
from app.schemas.manifest import ModelManifest, Normalization, Preprocessing  # noqa: E402
from workers.imaging.ultrasound import find_imaging_region, segmentation_input, to_grey  # noqa: E402

MODEL_ID = "thyroid-nodule-segmentation-reference"
# DICOM SEG coding of the nodule class (manifest decoding.segments).
SEGMENTS = {"nodule": {
    "label": "Thyroid nodule", "color_rgb": [255, 64, 32],
    "category": {"value": "49755003", "scheme": "SCT", "meaning": "Morphologically Altered Structure"},
    "type": {"value": "237495005", "scheme": "SCT", "meaning": "Thyroid nodule"},
}}
VERSION_DIR = MODEL.version_dir
CACHE_DIR = HERE / "data"  # git-ignored (models/*/data/)
SEED = 4321
SIZE = (96, 96)
N_TRAIN = 1600
N_VAL = 200
EPOCHS = 10
BATCH = 16
# Pixel statistics of region crops of the first train frames (grey/255); fixed so the manifest is stable.
MEAN, STD = 0.42, 0.22
RAW = Preprocessing(color_order="GRAY", crop="imaging-region", target_size=SIZE,
                    normalization=Normalization(scale=1.0, mean=[0.0], std=[1.0]))


def preprocessing() -> Preprocessing:
    return Preprocessing(color_order="GRAY", crop="imaging-region", target_size=SIZE,
                         normalization=Normalization(scale=1 / 255, mean=[MEAN], std=[STD]))


class UNet(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (8, 16, 32, 64)) -> None:
        super().__init__()
        a, b, c, d = widths
        self.enc1, self.enc2, self.enc3, self.bottom = _block(1, a), _block(a, b), _block(b, c), _block(c, d)
        self.up3, self.dec3 = nn.ConvTranspose2d(d, c, 2, 2), _block(2 * c, c)
        self.up2, self.dec2 = nn.ConvTranspose2d(c, b, 2, 2), _block(2 * b, b)
        self.up1, self.dec1 = nn.ConvTranspose2d(b, a, 2, 2), _block(2 * a, a)
        self.head = nn.Conv2d(a, 1, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(image)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        x = self.bottom(F.max_pool2d(e3, 2))
        x = self.dec3(torch.cat([self.up3(x), e3], 1))
        x = self.dec2(torch.cat([self.up2(x), e2], 1))
        x = self.dec1(torch.cat([self.up1(x), e1], 1))
        return self.head(x)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


def _prepare(args: tuple[str, int]) -> tuple[np.ndarray, np.ndarray]:
    split, index = args
    item = synthetic_us.split_item(split, index)
    grey = to_grey(item.frame)
    region = find_imaging_region(grey)
    image = segmentation_input(grey, region, RAW)[0].round().clip(0, 255).astype(np.uint8)
    target = segmentation_input(item.mask.astype(np.uint8) * 255, region, RAW)[0] >= 128
    return image, target


def load_split(split: str, count: int, workers: int = 2) -> tuple[np.ndarray, np.ndarray]:
    CACHE_DIR.mkdir(exist_ok=True)
    cache = CACHE_DIR / f"seg-{split}-{count}-{SIZE[0]}.npz"
    if cache.exists():
        data = np.load(cache)
        return data["images"], data["targets"]
    with Pool(workers) as pool:
        pairs = pool.map(_prepare, [(split, i) for i in range(count)], chunksize=16)
    images = np.stack([p[0] for p in pairs])
    targets = np.stack([p[1] for p in pairs])
    np.savez_compressed(cache, images=images, targets=targets)
    return images, targets


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return ((torch.from_numpy(images).float() / 255.0 - MEAN) / STD).unsqueeze(1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum((1, 2, 3))
    return (1 - (2 * inter + 1) / (prob.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)).mean()


def train(epochs: int = EPOCHS, n_train: int = N_TRAIN, log=print) -> tuple[UNet, dict]:
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    started = time.time()
    images, targets = load_split("train", n_train)
    val_images, val_targets = load_split("val", N_VAL)
    log(f"data ready in {time.time() - started:.0f}s: train {images.shape}, val {val_images.shape}")
    x_all, y_all = _to_tensor(images), torch.from_numpy(targets).float().unsqueeze(1)
    xv, yv = _to_tensor(val_images), torch.from_numpy(val_targets).float().unsqueeze(1)
    model = UNet()
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * (len(x_all) // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(x_all))
        total = 0.0
        for start in range(0, len(order) - BATCH + 1, BATCH):
            idx = torch.from_numpy(order[start:start + BATCH])
            x, y = x_all[idx].clone(), y_all[idx]
            flip = torch.rand(len(x)) < 0.5
            x[flip], y = x[flip].flip(-1), y.clone()
            y[flip] = y[flip].flip(-1)
            x = x * (1 + 0.15 * torch.randn(len(x), 1, 1, 1)) + 0.15 * torch.randn(len(x), 1, 1, 1)
            logits = model(x)
            loss = F.binary_cross_entropy_with_logits(logits, y) + dice_loss(logits, y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss) * len(x)
        dice = validation_dice(model, xv, yv)
        log(f"epoch {epoch + 1}/{epochs} loss {total / len(order):.4f} val dice@96 {dice:.4f} "
            f"({time.time() - started:.0f}s)")
    return model, {"val_dice_128": dice, "train_seconds": time.time() - started}


@torch.no_grad()
def validation_dice(model: UNet, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    pred = torch.cat([model(x[i:i + 64]) for i in range(0, len(x), 64)]) > 0
    inter = (pred & (y > 0.5)).sum((1, 2, 3)).float()
    return float((2 * inter / (pred.sum((1, 2, 3)) + (y > 0.5).sum((1, 2, 3))).clamp(min=1)).mean())


def export(model: UNet, stats: dict) -> ModelManifest:
    VERSION_DIR.mkdir(exist_ok=True)
    onnx_path = VERSION_DIR / "model.onnx"
    model.eval()
    torch.onnx.export(
        model, torch.zeros(1, 1, *SIZE), str(onnx_path), input_names=["image"], output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
    )
    manifest = ModelManifest.model_validate({
        "id": MODEL_ID,
        "version": 1,
        "task": "thyroid-malignancy",
        "title": "Thyroid nodule segmentation on B-mode ultrasound (stage 1 of the cascade), synthetic reference model",
        "intended_use": (
            "Research use only: outlines the thyroid nodule that the thyroid-malignancy-reference classifier "
            "scores. Trained and evaluated only on synthetic frames; not for clinical use or any diagnostic "
            "decision."
        ),
        "research_use_only": True,
        "sha256": file_sha256(onnx_path),
        "accepts": {"formats": ["png", "jpeg", "dicom"], "modalities": ["US", "OT", "SC"],
                    "samples_per_pixel": [1, 3], "min_rows": 64, "min_columns": 64, "max_frames": None},
        "inputs": [{"name": "image", "dtype": "float32", "layout": "NCHW", "shape": ["batch", 1, *SIZE]}],
        "outputs": [{"name": "logits", "dtype": "float32", "layout": "NCHW", "shape": ["batch", 1, *SIZE]}],
        "preprocessing": preprocessing().model_dump(exclude_unset=True),  # the fields set, not defaults
        "decoding": {"kind": "segmentation-labels", "activation": "sigmoid", "positive_classes": [0],
                     "min_component_voxels": 1, "segments": SEGMENTS},
        "class_names": ["nodule"],
        "operating_points": [{
            "name": "mask", "threshold": 0.5,
            "measured_on": "pixels with sigmoid probability >= 0.5 form the mask; the most confident "
                           "8-connected blob is kept, its holes filled",
        }],
        "default_operating_point": "mask",
        "metrics": {},
        "provenance": {
            "created": datetime.date.today().isoformat(),
            "framework": f"PyTorch {torch.__version__} CPU → ONNX opset 17",
            "training_data": (
                f"synthetic B-mode frames from models/thyroid-malignancy-reference/synthetic_us.py; train split "
                f"n={N_TRAIN} (seed {synthetic_us.SPLIT_SEEDS['train']}), val split n={N_VAL} "
                f"(seed {synthetic_us.SPLIT_SEEDS['val']}); {stats['epochs']} epochs, "
                f"{stats['train_seconds']:.0f} s on 2 CPU cores"
            ),
            "training_script": "models/thyroid-nodule-segmentation-reference/train.py",
        },
    })
    write_new_manifest(MODEL.manifest_path, manifest)
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--n-train", type=int, default=N_TRAIN)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, stats = train(args.epochs, args.n_train, log=lambda m: print(m, flush=True))
    stats["epochs"] = args.epochs
    manifest = export(model, stats)
    print(json.dumps({"sha256": manifest.sha256, **stats}, indent=2))


if __name__ == "__main__":
    main()
