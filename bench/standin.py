"""A production-sized DR stand-in: ResNet-50 at 512 px with random weights, exported to ONNX here.

A hospital's validated DR model will be about this size; the service's overhead is judged against it as
well as against the small reference model. Nothing is downloaded: the network is built from its layers.
"""

from __future__ import annotations

import json
from pathlib import Path

from app.model_repository import file_sha256
from devkit.reference_models import MODELS_DIR

STANDIN_ID = "dr-grading-resnet50-standin"
SIZE = 512


def _resnet50():
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, inplanes: int, planes: int, stride: int) -> None:
            super().__init__()
            out = planes * 4
            self.body = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(inplace=True),
                nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(inplace=True),
                nn.Conv2d(planes, out, 1, bias=False), nn.BatchNorm2d(out),
            )
            self.shortcut = (nn.Identity() if stride == 1 and inplanes == out else
                             nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out)))

        def forward(self, x):
            return torch.relu(self.body(x) + self.shortcut(x))

    layers, inplanes = [], 64
    for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for index in range(blocks):
            layers.append(Bottleneck(inplanes, planes, stride if index == 0 else 1))
            inplanes = planes * 4
    return nn.Sequential(
        nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1),
        *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 5),
    ).eval()


def build_standin_repository(root: Path) -> Path:
    """A model repository holding only the stand-in, with the reference model's manifest adapted to it."""
    import torch

    version_dir = root / STANDIN_ID / "1"
    onnx_path = version_dir / "model.onnx"
    if not onnx_path.exists():
        version_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        torch.onnx.export(_resnet50(), torch.zeros(1, 3, SIZE, SIZE), onnx_path, input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
    manifest = json.loads((MODELS_DIR / "dr-grading-reference" / "1" / "manifest.json").read_text())
    manifest.update(id=STANDIN_ID, title="ResNet-50 stand-in (random weights, benchmark only)",
                    sha256=file_sha256(onnx_path), metrics={})
    manifest["inputs"][0]["shape"] = ["batch", 3, SIZE, SIZE]
    manifest["preprocessing"]["target_size"] = [SIZE, SIZE]
    (version_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (version_dir / "CARD.md").write_text("Benchmark stand-in with random weights; its outputs mean nothing.\n")
    return root
