"""Train the thyroid malignancy reference classifier (stage 2 of the cascade) and export it to ONNX.

    .venv/bin/python models/thyroid-malignancy-reference/train.py

Needs the segmentation model (`models/thyroid-nodule-segmentation-reference/1/`) first: like the serving
pipeline, the classifier sees a square crop around the nodule with the image and the nodule mask as two
channels (Akkus et al.), and half of its training masks are the segmentation model's own outputs so that
it learns to score the masks it will get in production. The other half are the true masks, jittered, or
the ellipse inscribed in their bounding box (what a caller's box ROI becomes).

The target is the synthetic world's malignancy probability for the nodule's TI-RADS points (a soft
label, less noisy than the drawn label); AUC is measured against the drawn labels. Writes `1/model.onnx`
and `1/manifest.json`; held-out metrics are added by `evaluate.py --write`.
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

MODEL = ModelFolder.of_script(__file__)
HERE = MODEL.path

import synthetic_us  # noqa: E402
from app.model_repository import file_sha256, load_model_version  # noqa: E402
from app.schemas.manifest import ModelManifest, Normalization, Preprocessing  # noqa: E402
from workers.imaging.ultrasound import bounding_box, classifier_input, ellipse_in_box  # noqa: E402
from workers.onnx import load_model  # noqa: E402
from workers.pipelines.thyroid_malignancy import PreparedFrame, segment_nodule  # noqa: E402

MODEL_ID = "thyroid-malignancy-reference"
SEGMENTATION_ID = "thyroid-nodule-segmentation-reference"
SEGMENTATION_DIR = ModelFolder.named(SEGMENTATION_ID).version_dir
VERSION_DIR = MODEL.version_dir
CACHE_DIR = HERE / "data"  # git-ignored (models/*/data/)
SEED = 2468
SIZE = (96, 96)
# Train items start after those the segmentation model was trained on, so its masks here are unseen ones.
TRAIN_START = 1600
N_TRAIN = 4500
N_VAL = 400
EPOCHS = 24
BATCH = 32
MEAN, STD = 0.40, 0.24
# Lower probability bounds of TR2..TR5: geometric midpoints of the synthetic risks of adjacent point totals
# (see app/schemas/tirads.py and CARD.md). TR4 is the default operating point: where FNA can start.
BAND_BOUNDS = {"TR2": 0.001, "TR3": 0.004, "TR4": 0.02, "TR5": 0.65}
RAW = Preprocessing(color_order="GRAY", crop="imaging-region", target_size=SIZE,
                    normalization=Normalization(scale=1.0, mean=[0.0, 0.0], std=[1.0, 1.0]))

_segmenter = None


def preprocessing() -> Preprocessing:
    return Preprocessing(color_order="GRAY", crop="imaging-region", target_size=SIZE,
                         normalization=Normalization(scale=1 / 255, mean=[MEAN, 0.0], std=[STD, 1.0]))


class MaskedNoduleNet(nn.Module):
    """Strided conv stack over (image, mask); mean and max pooling feed one malignancy logit."""

    def __init__(self, widths: tuple[int, ...] = (16, 24, 32, 48)) -> None:
        super().__init__()
        a, b, c, d = widths
        self.features = nn.Sequential(
            _conv(2, a, 2), _conv(a, b, 1), _conv(b, b, 2), _conv(b, c, 1), _conv(c, c, 2), _conv(c, d, 1),
            _conv(d, d, 2),
        )
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(2 * d, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.features(image)
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        return self.head(self.dropout(pooled))


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def segmenter():
    global _segmenter
    if _segmenter is None:
        _segmenter = load_model(load_model_version(SEGMENTATION_DIR), ["CPUExecutionProvider"], threads=1)
    return _segmenter


def prepared_frame(item) -> PreparedFrame:
    """The serving pipeline's preparation of a synthetic frame (screenshot: region detected, no spacing)."""
    from workers.imaging.ultrasound import Spacing, find_imaging_region, to_grey

    grey = to_grey(item.frame)
    return PreparedFrame(frame=item.frame, grey=grey, region=find_imaging_region(grey), spacing=Spacing(None, "none"))


def _jitter(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage

    steps = int(rng.integers(-3, 4))
    if steps > 0:
        return ndimage.binary_dilation(mask, iterations=steps)
    if steps < 0:
        eroded = ndimage.binary_erosion(mask, iterations=-steps)
        return eroded if eroded.any() else mask
    return mask


def _prepare(args: tuple[str, int]) -> tuple[np.ndarray, float, int, float]:
    """Two samples of one frame: (predicted mask, true/jittered/box mask) crops, soft target, label, dice."""
    split, index = args
    item = synthetic_us.split_item(split, index)
    rng = np.random.default_rng([SEED, index, 7])
    prepared = prepared_frame(item)
    try:
        predicted = segment_nodule(prepared, segmenter()).mask
    except Exception:
        predicted = item.mask
    dice = 2 * float((predicted & item.mask).sum()) / float(predicted.sum() + item.mask.sum())
    if rng.random() < 0.3:
        other = ellipse_in_box(bounding_box(item.mask), item.mask.shape)
    else:
        other = _jitter(item.mask, rng)
    crops = np.stack([classifier_input(prepared.grey, m, RAW) for m in (predicted, other)])
    crops = crops.round().clip(0, 255).astype(np.uint8)
    return crops, synthetic_us.malignancy_probability(item.points), int(item.malignant), dice


def load_split(split: str, count: int, start: int = 0, workers: int = 2):
    CACHE_DIR.mkdir(exist_ok=True)
    cache = CACHE_DIR / f"cls-{split}-{start}-{count}-{SIZE[0]}-{file_sha256(SEGMENTATION_DIR / 'model.onnx')[:8]}.npz"
    if cache.exists():
        data = np.load(cache)
        return data["crops"], data["soft"], data["labels"], data["dice"]
    with Pool(workers) as pool:
        rows = pool.map(_prepare, [(split, i) for i in range(start, start + count)], chunksize=16)
    crops = np.stack([r[0] for r in rows])
    soft = np.array([r[1] for r in rows], np.float32)
    labels = np.array([r[2] for r in rows], np.int64)
    dice = np.array([r[3] for r in rows], np.float32)
    np.savez_compressed(cache, crops=crops, soft=soft, labels=labels, dice=dice)
    return crops, soft, labels, dice


def _to_tensor(crops: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(crops).float() / 255.0
    x[:, 0] = (x[:, 0] - MEAN) / STD
    return x


def train(epochs: int = EPOCHS, n_train: int = N_TRAIN, log=print) -> tuple[MaskedNoduleNet, dict]:
    from sklearn.metrics import roc_auc_score

    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    started = time.time()
    crops, soft, _, dice = load_split("train", n_train, TRAIN_START)
    val_crops, _, val_labels, val_dice = load_split("val", N_VAL)
    log(f"data ready in {time.time() - started:.0f}s: train {crops.shape}; segmentation dice on train frames "
        f"{dice.mean():.3f}, val {val_dice.mean():.3f}")
    x_pairs = _to_tensor(crops.reshape(-1, 2, *SIZE)).reshape(len(crops), 2, 2, *SIZE)
    y_all = torch.from_numpy(soft).float()
    xv = _to_tensor(val_crops[:, 0])  # the segmentation model's masks, as served
    model = MaskedNoduleNet()
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=5e-4)
    steps = epochs * (len(x_pairs) // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=2e-3, total_steps=steps, pct_start=0.15)
    auc = 0.0
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(x_pairs))
        # Each epoch sees every frame once, with its predicted or its true/jittered/box mask at random.
        view = torch.from_numpy(rng.integers(0, 2, len(x_pairs)))
        total = 0.0
        for start in range(0, len(order) - BATCH + 1, BATCH):
            idx = torch.from_numpy(order[start:start + BATCH])
            x, y = x_pairs[idx, view[idx]].clone(), y_all[idx]
            flip = torch.rand(len(x)) < 0.5
            x[flip] = x[flip].flip(-1)
            x[:, :1] = x[:, :1] * (1 + 0.12 * torch.randn(len(x), 1, 1, 1)) + 0.12 * torch.randn(len(x), 1, 1, 1)
            loss = F.binary_cross_entropy_with_logits(model(x)[:, 0], y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach()) * len(x)
        scores = predict(model, xv)
        auc = float(roc_auc_score(val_labels, scores))
        log(f"epoch {epoch + 1}/{epochs} loss {total / len(order):.4f} val auc {auc:.4f} "
            f"({time.time() - started:.0f}s)")
    return model, {"val_auc": auc, "train_seconds": time.time() - started, "epochs": epochs, "n_train": n_train}


@torch.no_grad()
def predict(model: MaskedNoduleNet, x: torch.Tensor) -> np.ndarray:
    model.eval()
    return torch.cat([torch.sigmoid(model(x[i:i + 128])[:, 0]) for i in range(0, len(x), 128)]).numpy()


def export(model: MaskedNoduleNet, stats: dict) -> ModelManifest:
    VERSION_DIR.mkdir(exist_ok=True)
    onnx_path = VERSION_DIR / "model.onnx"
    model.eval()
    torch.onnx.export(
        model, torch.zeros(1, 2, *SIZE), str(onnx_path), input_names=["image_and_mask"], output_names=["logits"],
        dynamic_axes={"image_and_mask": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
    )
    manifest = ModelManifest.model_validate({
        "id": MODEL_ID,
        "version": 1,
        "task": "thyroid-malignancy",
        "title": "Thyroid nodule malignancy on B-mode ultrasound (segment, then classify), synthetic reference model",
        "intended_use": (
            "Research use only: a reference model for exercising the thyroid-nodule pipeline end to end on "
            "B-mode ultrasound frames. Trained and evaluated only on synthetic frames whose labels follow a "
            "synthetic risk model; its probabilities and TI-RADS bands are not real-world risks. Not for "
            "clinical use or any diagnostic decision."
        ),
        "research_use_only": True,
        "sha256": file_sha256(onnx_path),
        "accepts": {"formats": ["png", "jpeg", "dicom"], "modalities": ["US", "OT", "SC"],
                    "samples_per_pixel": [1, 3], "min_rows": 64, "min_columns": 64, "max_frames": None},
        "inputs": [{"name": "image_and_mask", "dtype": "float32", "layout": "NCHW", "shape": ["batch", 2, *SIZE]}],
        "outputs": [{"name": "logits", "dtype": "float32", "layout": "NC", "shape": ["batch", 1]}],
        "preprocessing": preprocessing().model_dump(exclude_unset=True),  # the fields set, not defaults
        "decoding": {"kind": "binary-probability", "activation": "sigmoid", "positive_classes": [0]},
        "class_names": ["malignant"],
        "operating_points": [
            {"name": band, "threshold": bound,
             "measured_on": f"lower probability bound of {band} (app/schemas/tirads.py); sensitivity and "
                            f"specificity of 'band >= {band}' for the drawn malignancy label are filled in by "
                            "evaluate.py --write on the held-out test split"}
            for band, bound in BAND_BOUNDS.items()
        ],
        "default_operating_point": "TR4",
        "metrics": {},
        "provenance": {
            "created": datetime.date.today().isoformat(),
            "framework": f"PyTorch {torch.__version__} CPU → ONNX opset 17",
            "training_data": (
                f"synthetic B-mode frames from models/thyroid-malignancy-reference/synthetic_us.py; train split items "
                f"{TRAIN_START}..{TRAIN_START + stats['n_train'] - 1} (seed {synthetic_us.SPLIT_SEEDS['train']}), "
                f"val split n={N_VAL} (seed {synthetic_us.SPLIT_SEEDS['val']}); masks from "
                f"{SEGMENTATION_ID} and jittered true masks; {stats['epochs']} epochs, {stats['train_seconds']:.0f} s "
                "on 2 CPU cores"
            ),
            "training_script": "models/thyroid-malignancy-reference/train.py",
        },
        "requires": [SEGMENTATION_ID],
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
    CACHE_DIR.mkdir(exist_ok=True)
    torch.save(model.state_dict(), CACHE_DIR / "classifier-state.pt")  # for fine-tuning; not committed
    manifest = export(model, stats)
    print(json.dumps({"sha256": manifest.sha256, **stats}, indent=2))


if __name__ == "__main__":
    main()
