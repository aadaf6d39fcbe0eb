"""Diabetic retinopathy grading of one colour fundus photograph."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from app.errors import BadInputError
from app.schemas.manifest import ModelManifest
from app.schemas.options import DRGradingOptions
from app.schemas.results import DRGradingResult, OperatingPointUsed
from app.schemas.tasks import TaskName
from workers.decoding import activate, operating_point_used, positive_probability
from workers.imaging.fundus import fit_to_model, to_model_tensor
from workers.imaging.photo import load_photo
from workers.onnx import LoadedModel
from workers.pipelines.base import ArtifactOutput, JobInput, PipelineOutput, StageTimer


PREVIEW_NAME = "retina.jpg"
PREVIEW_JPEG_QUALITY = 90


class DRGradingPipeline:
    task = TaskName.DR_GRADING
    stages = ("load", "preprocess", "infer", "decode", "outputs")

    def run(
        self, inputs: list[JobInput], options: DRGradingOptions, model: LoadedModel, stages: StageTimer
    ) -> PipelineOutput:
        manifest = model.manifest
        if len(inputs) != 1:
            raise BadInputError(f"DR grading takes one photograph per job; got {len(inputs)}")
        with stages("load"):
            photo = load_photo(inputs[0].path, inputs[0].format, min_side=decode_side(manifest))
        with stages("preprocess"):
            # Kept at the model's size, so the preview below shows exactly the pixels the model graded.
            graded = fit_to_model(photo, manifest.preprocessing)
            tensor = to_model_tensor(graded, manifest.preprocessing)
        with stages("infer"):
            logits = model.run({manifest.inputs[0].name: tensor[np.newaxis]})[manifest.outputs[0].name][0]
        with stages("decode"):
            result = grade_from_logits(logits, manifest, options)
        with stages("outputs"):
            artifacts = [retina_preview(graded)]
        return PipelineOutput(result=result, artifacts=artifacts)


def decode_side(manifest: ModelManifest) -> int | None:
    """Pixels a photo must keep on its shorter side: twice the model's input, so that the retina disc, which
    may fill only part of the frame, is still shrunk (never enlarged) to the model's size after cropping."""
    target = manifest.preprocessing.target_size
    return 2 * max(target) if target else None


def grade_from_logits(logits: np.ndarray, manifest: ModelManifest, options: DRGradingOptions) -> DRGradingResult:
    probabilities = activate(logits, manifest.decoding)
    grade = int(np.argmax(probabilities))
    referable_probability = positive_probability(probabilities, manifest.decoding)
    used = operating_point_used(manifest, options.operating_point)
    if options.referable_threshold is not None:
        used = OperatingPointUsed(name="caller", threshold=options.referable_threshold, overridden=True)
    return DRGradingResult(
        grade=grade,
        grade_name=manifest.class_names[grade],
        probabilities=[round(float(p), 6) for p in probabilities / probabilities.sum()],
        referable=referable_probability >= used.threshold,
        referable_probability=round(referable_probability, 6),
        operating_point=used,
        research_use_only=manifest.research_use_only,
    )


def retina_preview(graded: np.ndarray) -> ArtifactOutput:
    """The pixels the model graded (its crop, at its input size), so a reader can check the region used.

    JPEG, as fundus cameras write: a photograph for the eye, not a mask to measure, and encoding it costs
    about a twentieth of a PNG's deflate (0.4 against 8 ms at 224 px, 1.5 against 49 ms at 512 px here).
    """
    buffer = io.BytesIO()
    Image.fromarray(graded).save(buffer, format="JPEG", quality=PREVIEW_JPEG_QUALITY)
    return ArtifactOutput(name=PREVIEW_NAME, media_type="image/jpeg", data=buffer.getvalue())
