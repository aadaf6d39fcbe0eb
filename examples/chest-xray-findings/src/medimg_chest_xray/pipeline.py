"""The worker side of chest-xray-findings: load → preprocess → infer → decode.

Every number (input size, normalisation, per-finding thresholds) comes from the model's manifest; the
multi-label decoding is medimg's own `multilabel-sigmoid` kind (workers/decoding.py).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from app.errors import BadInputError, ModelError
from app.schemas.manifest import Preprocessing
from medimg_chest_xray.schemas import ChestXrayFinding, ChestXrayFindingsOptions, ChestXrayFindingsResult
from workers.decoding import multilabel_decisions
from workers.imaging.photo import load_photo
from workers.onnx import LoadedModel
from workers.pipelines.base import JobContext, JobInput, PipelineOutput, StageTimer


class ChestXrayFindingsPipeline:
    task = "chest-xray-findings"  # its registration's name (a TaskName once the package is installed)
    stages = ("load", "preprocess", "infer", "decode")

    def run(self, inputs: list[JobInput], options: ChestXrayFindingsOptions, model: LoadedModel,
            stages: StageTimer, context: JobContext | None = None) -> PipelineOutput:
        manifest = model.manifest
        if len(inputs) != 1:
            raise BadInputError(f"chest-xray-findings takes one radiograph per job; got {len(inputs)}")
        with stages("load"):
            grey = to_grey(load_photo(inputs[0].path, inputs[0].format))
        with stages("preprocess"):
            tensor = to_model_tensor(grey, manifest.preprocessing)
        with stages("infer"):
            raw = model.run({manifest.inputs[0].name: tensor[np.newaxis]})[manifest.outputs[0].name][0]
        with stages("decode"):
            decisions = multilabel_decisions(raw, manifest, options.threshold)
            findings = [ChestXrayFinding(name=d.name, probability=round(d.probability, 4), threshold=d.threshold,
                                         present=round(d.probability, 4) >= d.threshold) for d in decisions]
            result = ChestXrayFindingsResult(
                findings=findings, present=[f.name for f in findings if f.present],
                thresholds_overridden=options.threshold is not None,
                research_use_only=manifest.research_use_only,
            )
        return PipelineOutput(result=result)


def to_grey(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 2:
        return pixels
    return np.asarray(Image.fromarray(pixels).convert("L"))


def to_model_tensor(grey: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """(1, H, W) float32: area-averaged to the manifest's size, then (pixel * scale - mean) / std."""
    if spec.target_size is None or spec.normalization is None:
        raise ModelError("chest-xray-findings needs preprocessing.target_size and normalization in the manifest")
    height, width = spec.target_size
    small = np.asarray(Image.fromarray(grey).resize((width, height), Image.Resampling.BOX), dtype=np.float32)
    norm = spec.normalization
    return ((small * norm.scale - norm.mean[0]) / norm.std[0])[np.newaxis].astype(np.float32)
