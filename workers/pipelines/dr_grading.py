"""Diabetic retinopathy grading of one colour fundus photograph."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

from app.errors import BadInputError
from app.schemas.manifest import ModelManifest
from app.schemas.options import DRGradingOptions
from app.schemas.quality import ClassificationUncertainty, Quality
from app.schemas.results import DRGradingResult, OperatingPointUsed
from app.schemas.tasks import TaskName
from workers import saliency, uncertainty
from workers.decoding import activate, calibrated, operating_point_used, positive_probability
from workers.imaging.fundus import FundusPhoto, fit_to_model, retina_square, to_model_tensor
from workers.imaging.photo import load_photo
from workers.onnx import LoadedModel
from workers.pipelines.base import ArtifactOutput, JobContext, JobInput, PipelineOutput, StageTimer, ungradable
from workers.quality.fundus import check_fundus


PREVIEW_NAME = "retina.jpg"
PREVIEW_JPEG_QUALITY = 90


class DRGradingPipeline:
    task = TaskName.DR_GRADING
    stages = ("load", "quality", "preprocess", "infer", "uncertainty", "decode", "saliency", "outputs")

    def run(
        self, inputs: list[JobInput], options: DRGradingOptions, model: LoadedModel, stages: StageTimer,
        context: JobContext | None = None,
    ) -> PipelineOutput:
        manifest = model.manifest
        if len(inputs) != 1:
            raise BadInputError(f"DR grading takes one photograph per job; got {len(inputs)}")
        with stages("load"):
            photo = load_photo(inputs[0].path, inputs[0].format, min_side=decode_side(manifest))
        with stages("quality"):
            # The retina disc is found here once, for the gate and the crop below alike.
            fundus = FundusPhoto(photo)
            quality = check_fundus(fundus, manifest.quality.fundus)
        if not quality.gradable:
            return ungradable(quality, manifest)
        with stages("preprocess"):
            # Kept at the model's size, so the preview below shows exactly the pixels the model graded.
            graded = fit_to_model(fundus, manifest.preprocessing)
            tensor = to_model_tensor(graded, manifest.preprocessing)
        with stages("infer"):
            logits = model.run({manifest.inputs[0].name: tensor[np.newaxis]})[manifest.outputs[0].name][0]
        spread = None
        if uncertainty.wanted(options.uncertainty, manifest.uncertainty):
            with stages("uncertainty"):
                spread = augmented_spread(graded, logits, model, options)
        with stages("decode"):
            result = grade_from_logits(logits, manifest, options, quality, spread)
        artifacts = []
        if options.explain:
            with stages("saliency"):
                artifacts.append(saliency_overlay(inputs[0], photo, tensor, model))
        with stages("outputs"):
            artifacts.insert(0, retina_preview(graded))
        return PipelineOutput(result=result, artifacts=artifacts)


def referable_scores(model: LoadedModel) -> Callable[[np.ndarray], np.ndarray]:
    """(B, C, H, W) model inputs → (B,) referable probabilities, as decode computes them."""
    manifest = model.manifest

    def score(batch: np.ndarray) -> np.ndarray:
        logits = model.run({manifest.inputs[0].name: batch})[manifest.outputs[0].name]
        probabilities = activate(calibrated(logits, manifest.calibration), manifest.decoding)
        return probabilities[:, manifest.decoding.positive_classes].sum(axis=1)

    return score


def augmented_spread(graded: np.ndarray, logits: np.ndarray, model: LoadedModel,
                     options: DRGradingOptions) -> ClassificationUncertainty:
    """The referable probability under the manifest's augmentations (one batched run) beside the original's."""
    manifest, settings = model.manifest, model.manifest.uncertainty
    batch = np.stack([to_model_tensor(uncertainty.augment(graded, name, settings), manifest.preprocessing)
                      for name in settings.augmentations])
    original = activate(calibrated(logits, manifest.calibration), manifest.decoding)
    scores = [positive_probability(original, manifest.decoding), *referable_scores(model)(batch)]
    threshold = options.referable_threshold
    if threshold is None:
        threshold = operating_point_used(manifest, options.operating_point).threshold
    return uncertainty.classification(scores, uncertainty.names(settings), threshold, settings)


def saliency_overlay(job_input: JobInput, photo: np.ndarray, tensor: np.ndarray, model: LoadedModel) -> ArtifactOutput:
    """Occlusion sensitivity of the referable probability, on the photo's own grid (a JPEG decoded at reduced
    scale is decoded again in full, so the overlay matches the file's pixels)."""
    heat, _ = saliency.occlusion_map(tensor, saliency.log_odds(referable_scores(model)), model.manifest.saliency)
    if job_input.format == "jpeg":
        photo = load_photo(job_input.path, job_input.format)
    image = Image.fromarray(photo if photo.ndim == 3 else np.repeat(photo[..., None], 3, axis=-1))
    box = retina_square(image) if model.manifest.preprocessing.crop == "retina-disc" else None
    source_heat = saliency.to_source_grid(heat, box or (0, 0, image.width, image.height), photo.shape[:2])
    return ArtifactOutput(name=saliency.OVERLAY_NAME, media_type="image/png",
                          data=saliency.overlay_png(photo, source_heat))


def decode_side(manifest: ModelManifest) -> int | None:
    """Pixels a photo must keep on its shorter side: twice the model's input, so that the retina disc, which
    may fill only part of the frame, is still shrunk (never enlarged) to the model's size after cropping."""
    target = manifest.preprocessing.target_size
    return 2 * max(target) if target else None


def grade_from_logits(logits: np.ndarray, manifest: ModelManifest, options: DRGradingOptions,
                      quality: Quality | None = None,
                      spread: ClassificationUncertainty | None = None) -> DRGradingResult:
    probabilities = activate(calibrated(logits, manifest.calibration), manifest.decoding)
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
        quality=quality,
        uncertainty=spread,
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
