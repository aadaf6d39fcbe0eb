"""Train the DR-grading reference model on synthetic fundus photographs and export it to ONNX.

    .venv/bin/python models/dr-grading-reference/train.py

Generates the "train" and "val" splits, preprocesses them once with the serving preprocessing, trains a
small CNN on CPU, exports `1/model.onnx` (opset 17) and writes `1/manifest.json` with the referable
operating point chosen on the val split, on probabilities calibrated by a temperature also fitted on val.
Test-split metrics are added by `evaluate.py --write`.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
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

import synthetic_fundus  # noqa: E402
from app.model_repository import file_sha256  # noqa: E402
from app.schemas.manifest import ModelManifest, Normalization, Preprocessing  # noqa: E402
from calibrate import POSITIVE_CLASSES, calibrate_on_val, recalibrate, referable_point  # noqa: E402
from split_tensors import cached_split  # noqa: E402

MODEL_ID = "dr-grading-reference"
VERSION_DIR = MODEL.version_dir
SEED = 1234
TARGET_SIZE = (224, 224)
N_TRAIN = 6000
N_VAL = 500
EPOCHS = 12
BATCH = 32


class GradingNet(nn.Module):
    """Plain strided conv stack; average and max pooling feed the head.

    Max pooling lets a single small lesion (a microaneurysm, a neovascular tuft) decide presence; average
    pooling carries how much disease there is, which separates moderate from severe.
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128, 192), classes: int = 5) -> None:
        super().__init__()
        a, b, c, d, e = widths
        self.features = nn.Sequential(
            _conv(3, a, 2), _conv(a, b, 2), _conv(b, b, 1), _conv(b, c, 2), _conv(c, c, 1),
            _conv(c, d, 2), _conv(d, d, 1), _conv(d, e, 2),
        )
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(2 * e, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.features(image)
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        return self.head(self.dropout(pooled))


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def ordinal_loss(logits: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus squared earth mover's distance between predicted and true grade CDFs.

    The EMD term charges a grade-4 image called grade 0 more than one called grade 3, as QWK does.
    """
    ce = F.cross_entropy(logits, grades, label_smoothing=0.05)
    cdf = torch.cumsum(F.softmax(logits, dim=1), dim=1)
    target_cdf = torch.cumsum(F.one_hot(grades, logits.shape[1]).float(), dim=1)
    emd = ((cdf - target_cdf) ** 2).sum(dim=1).mean()
    return ce + emd


def channel_statistics(n: int = 200) -> Normalization:
    """Per-channel mean and std of cropped, resized train images (black border included)."""
    raw = Preprocessing(color_order="RGB", crop="retina-disc", target_size=TARGET_SIZE,
                        normalization=Normalization(scale=1 / 255, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0]))
    images, _ = split_tensors("train", n, raw)
    pixels = images.astype(np.float32).transpose(1, 0, 2, 3).reshape(3, -1)
    return Normalization(
        scale=1 / 255,
        mean=[round(float(v), 4) for v in pixels.mean(axis=1)],
        std=[round(float(v), 4) for v in pixels.std(axis=1)],
    )


def train(model: GradingNet, images: np.ndarray, grades: np.ndarray, val: tuple[np.ndarray, np.ndarray],
          epochs: int, log) -> None:
    generator = torch.Generator().manual_seed(SEED)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * (len(images) // BATCH)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    x_all = torch.from_numpy(images)  # float16, converted per batch to keep memory low
    y_all = torch.from_numpy(grades)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        started, total = time.time(), 0.0
        for start in range(0, len(order) - BATCH + 1, BATCH):
            idx = order[start : start + BATCH]
            x = x_all[idx].float()
            # Mirror images are valid fundus photographs (left/right eye, inverted camera).
            if torch.rand(1, generator=generator) < 0.5:
                x = x.flip(3)
            if torch.rand(1, generator=generator) < 0.5:
                x = x.flip(2)
            x = x.contiguous(memory_format=torch.channels_last)
            loss = ordinal_loss(model(x), y_all[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(idx)
        accuracy, kappa = _val_scores(model, *val)
        log(f"epoch {epoch + 1}/{epochs} loss {total / len(order):.3f} val acc {accuracy:.3f} "
            f"val QWK {kappa:.3f} ({time.time() - started:.0f}s)")


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray) -> np.ndarray:
    model.eval()
    out = [F.softmax(model(torch.from_numpy(images[i : i + 64]).float()), dim=1).numpy()
           for i in range(0, len(images), 64)]
    return np.concatenate(out)


def _val_scores(model: nn.Module, images: np.ndarray, grades: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import cohen_kappa_score

    predicted = predict(model, images).argmax(axis=1)
    return float((predicted == grades).mean()), float(cohen_kappa_score(grades, predicted, weights="quadratic"))


def export_onnx(model: nn.Module, path: Path) -> None:
    model.eval()
    example = torch.zeros(1, 3, *TARGET_SIZE)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model, (example,), str(path), dynamo=False, opset_version=17,
        input_names=["image"], output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
    )


def build_manifest(onnx_path: Path, preprocessing: Preprocessing, calibration: dict, threshold: float,
                   sensitivity: float, specificity: float, previous_metrics: dict[str, float]) -> ModelManifest:
    seeds = synthetic_fundus.SPLIT_SEEDS
    return ModelManifest(
        id=MODEL_ID,
        version=1,
        task="dr-grading",
        title="Diabetic retinopathy grading (ICDR 0-4), synthetic reference model",
        intended_use=(
            "Research use only: a reference model for exercising the inference pipeline end to end on colour "
            "fundus photographs. Trained and evaluated only on synthetic images; not for clinical use or "
            "any diagnostic decision."
        ),
        research_use_only=True,
        sha256=file_sha256(onnx_path),
        accepts={
            "formats": ["png", "jpeg", "dicom"],
            "modalities": ["OP", "XC", "SC"],
            "samples_per_pixel": [3, 1],
            "min_rows": 128,
            "min_columns": 128,
            "max_frames": 1,
            "max_instances": 1,
        },
        inputs=[{"name": "image", "dtype": "float32", "layout": "NCHW", "shape": ["batch", 3, *TARGET_SIZE]}],
        outputs=[{"name": "logits", "dtype": "float32", "layout": "NC", "shape": ["batch", 5]}],
        preprocessing=preprocessing,
        decoding={"kind": "ordinal-grade", "activation": "softmax", "positive_classes": POSITIVE_CLASSES},
        class_names=list(synthetic_fundus.GRADE_NAMES),
        operating_points=[referable_point(calibration, threshold, sensitivity, specificity)],
        default_operating_point="referable",
        metrics=previous_metrics,
        calibration=calibration,
        provenance={
            "created": datetime.date.today().isoformat(),
            "framework": f"PyTorch {torch.__version__.split('+')[0]} CPU → ONNX opset 17",
            "training_data": (
                f"synthetic colour fundus photographs from models/{MODEL_ID}/synthetic_fundus.py, grade derived "
                f"from the lesions drawn (ICDR); train split n={N_TRAIN} (seed {seeds['train']}), "
                f"val split n={N_VAL} (seed {seeds['val']}), balanced across grades"
            ),
            "training_script": f"models/{MODEL_ID}/train.py",
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=N_TRAIN)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--no-cache", action="store_true", help="regenerate tensors instead of reusing data/")
    parser.add_argument("--recalibrate", action="store_true",
                        help="keep 1/model.onnx; only re-fit the temperature and re-choose the operating point on val")
    args = parser.parse_args()
    if args.recalibrate:
        recalibrate(not args.no_cache)
        return

    started = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - started:6.0f}s] {message}", flush=True)

    torch.set_num_threads(2)
    torch.manual_seed(SEED)
    np.random.seed(SEED)

    normalization = channel_statistics()
    preprocessing = Preprocessing(color_order="RGB", crop="retina-disc", target_size=TARGET_SIZE,
                                  normalization=normalization)
    log(f"normalisation mean {normalization.mean} std {normalization.std}")
    train_x, train_y = cached_split("train", args.n_train, preprocessing, not args.no_cache)
    val_x, val_y = cached_split("val", N_VAL, preprocessing, not args.no_cache)
    log(f"data ready: train {train_x.shape} grades {np.bincount(train_y, minlength=5).tolist()}, val {val_x.shape}")

    model = GradingNet().to(memory_format=torch.channels_last)
    log(f"model parameters: {sum(p.numel() for p in model.parameters()):,}")
    train(model, train_x, train_y, (val_x, val_y), args.epochs, log)

    onnx_path = VERSION_DIR / "model.onnx"
    export_onnx(model.to(memory_format=torch.contiguous_format), onnx_path)
    calibration, threshold, sensitivity, specificity = calibrate_on_val(onnx_path, val_x, val_y)
    log(f"exported {onnx_path} ({onnx_path.stat().st_size / 1e6:.2f} MB); val threshold {threshold} "
        f"sensitivity {sensitivity:.3f} specificity {specificity:.3f}")

    manifest = build_manifest(onnx_path, preprocessing, calibration, threshold, sensitivity, specificity,
                              previous_metrics={})
    write_new_manifest(MODEL.manifest_path, manifest)
    log(f"wrote {MODEL.manifest_path}; total wall time {(time.time() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
