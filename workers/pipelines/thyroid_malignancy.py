"""Thyroid nodule malignancy on one B-mode ultrasound frame: outline the nodule, then classify image + mask.

    load → preprocess (imaging region, pixel spacing) → segment or detect (or the caller's ROI) → classify
    → decode → outputs

The task's model is the classifier; the localiser is the first model its manifest `requires`: a segmentation
model (its mask is the nodule) or a 2-D box-detection model (workers/pipelines/thyroid_detection.py: every box is
reported, the best one's inscribed ellipse is the nodule). A caller's `options.roi` (a box, or a mask artifact of
an earlier job of theirs) replaces the localiser entirely.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from app.errors import BadInputError, JobNotFound, ModelError
from app.schemas.manifest import ModelManifest, SegmentCoding
from app.schemas.options import RoiBox, RoiMaskArtifact, ThyroidMalignancyOptions
from app.schemas.quality import ClassificationUncertainty, Quality
from app.schemas.results import ThyroidDetection, ThyroidMalignancyResult, ThyroidNodule
from app.schemas.tasks import TaskName
from app.schemas.tirads import band_bounds_from_operating_points, band_for_probability, recommend
from app.storage.blobs import BlobNotFound
from workers import saliency, uncertainty
from workers.decoding import activate, calibrated, operating_point_used
from workers.imaging.photo import load_photo
from workers.imaging.ultrasound import (
    Box,
    Spacing,
    bounding_box,
    classifier_crop_box,
    classifier_input,
    ellipse_in_box,
    find_imaging_region,
    is_taller_than_wide,
    mask_from_probabilities,
    mask_outline,
    max_diameter_px,
    read_geometry,
    resolve_spacing,
    segmentation_input,
    tissue_region,
    to_grey,
)
from workers.onnx import LoadedModel
from workers.pipelines.base import ArtifactOutput, JobContext, JobInput, PipelineOutput, StageTimer, ungradable
from workers.pipelines.thyroid_detection import detect_nodules, nodule_box
from workers.quality.ultrasound import check_frame, check_nodule

MASK_ARTIFACT = "nodule-mask.png"
OVERLAY_ARTIFACT = "overlay.png"


@dataclass(frozen=True)
class PreparedFrame:
    frame: np.ndarray  # as decoded: uint8 grey or RGB
    grey: np.ndarray
    region: Box
    spacing: Spacing


@dataclass(frozen=True)
class OutlinedNodule:
    mask: np.ndarray  # bool, the frame's rows and columns
    source: str  # "segmentation", "detection", "roi-box" or "roi-mask"
    detections: tuple[ThyroidDetection, ...] = ()  # a box-detection localiser's findings, best (the nodule) first


class ThyroidMalignancyPipeline:
    task = TaskName.THYROID_MALIGNANCY
    stages = ("load", "preprocess", "quality", "segment", "classify", "uncertainty", "decode", "saliency", "outputs")

    def run(
        self,
        inputs: list[JobInput],
        options: ThyroidMalignancyOptions,
        model: LoadedModel,
        stages: StageTimer,
        context: JobContext | None = None,
    ) -> PipelineOutput:
        if len(inputs) != 1:
            raise BadInputError(f"Thyroid malignancy scoring takes one ultrasound frame per job; got {len(inputs)}")
        with stages("load"):
            frame = load_frame(inputs[0], options.frame)
        with stages("preprocess"):
            prepared = prepare_frame(frame, inputs[0], options.pixel_spacing_mm)
        limits = model.manifest.quality.ultrasound
        with stages("quality"):
            quality = check_frame(prepared.grey, prepared.region, prepared.spacing.mm, limits)
        if not quality.gradable:
            return ungradable(quality, model.manifest)
        with stages("segment"):
            if options.roi is not None:
                nodule = nodule_from_roi(options.roi, prepared.grey.shape, context)
            else:
                nodule = localise_nodule(prepared, localiser_model(model))
        with stages("quality"):
            quality = check_nodule(nodule.mask, prepared.region, quality, limits)
        if not quality.gradable:
            return ungradable(quality, model.manifest)
        with stages("classify"):
            probability = classify_nodule(prepared.grey, nodule.mask, model)
        spread = None
        if uncertainty.wanted(options.uncertainty, model.manifest.uncertainty):
            with stages("uncertainty"):
                spread = augmented_spread(prepared.grey, nodule.mask, probability, model, options.operating_point)
        with stages("decode"):
            result = build_result(probability, nodule, prepared.spacing, model.manifest, options.operating_point,
                                  quality, spread)
        artifacts = []
        if options.explain:
            with stages("saliency"):
                artifacts.append(saliency_overlay(prepared, nodule.mask, model))
        with stages("outputs"):
            artifacts[:0] = [mask_png(nodule.mask), overlay_png(prepared.frame, nodule.mask, nodule.detections)]
        return PipelineOutput(result=result, artifacts=artifacts, segments=nodule_coding(model))


def load_frame(job_input: JobInput, frame: int | None) -> np.ndarray:
    if frame not in (None, 0) and job_input.format != "dicom":
        raise BadInputError(f"options.frame={frame} applies to multi-frame DICOM; a {job_input.format} has one frame")
    return load_photo(job_input.path, job_input.format, frame or 0)


def prepare_frame(frame: np.ndarray, job_input: JobInput, option_spacing_mm: float | None) -> PreparedFrame:
    """The imaging region (the DICOM US region when the file declares one, else detected) and pixel spacing."""
    grey = to_grey(frame)
    try:
        geometry = read_geometry(job_input.path, job_input.format)
    except Exception as exc:  # header already read at intake; a failure here is still the input's fault
        raise BadInputError(f"The DICOM header could not be read ({type(exc).__name__})") from exc
    region = tissue_region(geometry, grey.shape)
    box = region.box if region is not None else find_imaging_region(grey)
    return PreparedFrame(frame=frame, grey=grey, region=box, spacing=resolve_spacing(region, geometry, option_spacing_mm))


LOCALISER_KINDS = ("segmentation-labels", "box-detection")


def localiser_model(model: LoadedModel) -> LoadedModel:
    """The cascade's first stage: the model the classifier's manifest requires, a segmenter or a box detector."""
    if not model.manifest.requires:
        raise ModelError(f"{model.manifest.id} requires no segmentation or detection model; send options.roi instead")
    localiser = model.required(model.manifest.requires[0])
    if localiser.manifest.decoding.kind not in LOCALISER_KINDS:
        raise ModelError(f"{localiser.manifest.id} is neither a segmentation nor a box-detection model (decoding "
                         f"{localiser.manifest.decoding.kind})")
    return localiser


def localise_nodule(prepared: PreparedFrame, localiser: LoadedModel) -> OutlinedNodule:
    if localiser.manifest.decoding.kind == "box-detection":
        return detect_nodule(prepared, localiser)
    return segment_nodule(prepared, localiser)


def nodule_coding(model: LoadedModel) -> dict[str, SegmentCoding]:
    """How the SEG writes the nodule mask (MASK_ARTIFACT): as the localiser's manifest codes its class,
    whoever outlined this nodule (the model, or the caller's ROI: the same structure)."""
    if not model.manifest.requires:
        return {}
    segmenter = model.required(model.manifest.requires[0]).manifest
    coding = (segmenter.decoding.segments or {}).get(segmenter.class_names[0])
    return {MASK_ARTIFACT: coding} if coding is not None else {}


def segment_nodule(prepared: PreparedFrame, segmenter: LoadedModel) -> OutlinedNodule:
    manifest = segmenter.manifest
    if manifest.preprocessing.resize != "stretch":
        raise ModelError(f"{manifest.id}: a segmentation model's mask is read back from a stretched region; "
                         f"preprocessing.resize {manifest.preprocessing.resize} is for box-detection models")
    tensor = segmentation_input(prepared.grey, prepared.region, manifest.preprocessing)
    logits = segmenter.run({manifest.inputs[0].name: tensor[np.newaxis]})[manifest.outputs[0].name][0]
    channel = manifest.decoding.positive_classes[0] if manifest.decoding.positive_classes else 0
    probabilities = activate(logits[channel], manifest.decoding)
    mask = mask_from_probabilities(probabilities, prepared.region, prepared.grey.shape,
                                   manifest.operating_point().threshold)
    if not mask.any():
        raise BadInputError(
            "No thyroid nodule was found in the imaging region; outline it with options.roi "
            '({"box": [x0, y0, x1, y1]}) to score it'
        )
    return OutlinedNodule(mask=mask, source="segmentation")


def detect_nodule(prepared: PreparedFrame, detector: LoadedModel) -> OutlinedNodule:
    """The detector's boxes; the nodule scored is the ellipse inscribed in the best one (as a caller's box ROI)."""
    detections = detect_nodules(prepared.frame, prepared.region, prepared.spacing.mm, detector)
    if not detections:
        raise BadInputError(
            f"No thyroid nodule was found in the imaging region (no box of {detector.manifest.id} scored at or above "
            f"{detector.manifest.operating_point().threshold:g}); outline it with options.roi "
            '({"box": [x0, y0, x1, y1]}) to score it'
        )
    mask = ellipse_in_box(nodule_box(detections[0], prepared.grey.shape), prepared.grey.shape)
    return OutlinedNodule(mask=mask, source="detection", detections=tuple(detections))


def nodule_from_roi(roi: RoiBox | RoiMaskArtifact, frame_shape: tuple[int, ...],
                    context: JobContext | None) -> OutlinedNodule:
    rows, cols = frame_shape[:2]
    if isinstance(roi, RoiBox):
        x0, y0, x1, y1 = roi.box
        if x1 > cols or y1 > rows:
            raise BadInputError(f"options.roi.box {list(roi.box)} reaches outside the {cols}x{rows} frame")
        return OutlinedNodule(mask=ellipse_in_box(roi.box, frame_shape), source="roi-box")
    mask = read_mask_artifact(roi, context)
    if mask.shape != (rows, cols):
        raise BadInputError(
            f"options.roi.mask_artifact is {mask.shape[1]}x{mask.shape[0]} pixels; the frame is {cols}x{rows}"
        )
    if not mask.any():
        raise BadInputError("options.roi.mask_artifact is empty (no non-zero pixel)")
    return OutlinedNodule(mask=mask, source="roi-mask")


def read_mask_artifact(roi: RoiMaskArtifact, context: JobContext | None) -> np.ndarray:
    """An earlier job's PNG artifact, if it belongs to the same caller; non-zero pixels are the nodule."""
    if context is None:
        raise BadInputError("options.roi.mask_artifact needs the job store, which this run does not have")
    ref = roi.mask_artifact
    not_found = BadInputError(f"options.roi.mask_artifact: no job {ref.job_id!r} of yours")
    try:
        earlier = context.jobs.get(ref.job_id)
    except JobNotFound:
        raise not_found from None
    if earlier.caller != context.caller:
        raise not_found  # another caller's job is indistinguishable from a missing one
    artifact = next((a for a in earlier.artifacts if a.name == ref.name), None)
    if artifact is None:
        available = ", ".join(a.name for a in earlier.artifacts) or "none"
        raise BadInputError(f"options.roi.mask_artifact: job {ref.job_id} has no artifact {ref.name!r}; "
                            f"available: {available}")
    if artifact.media_type != "image/png":
        raise BadInputError(f"options.roi.mask_artifact {ref.name!r} is {artifact.media_type}, not a PNG mask")
    try:
        with Image.open(context.blobs.local_path(artifact.key)) as image:
            pixels = np.asarray(image.convert("L"))
    except BlobNotFound:
        raise BadInputError(f"options.roi.mask_artifact {ref.name!r} of job {ref.job_id} is no longer stored") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise BadInputError(f"options.roi.mask_artifact {ref.name!r} is not a readable PNG") from exc
    return pixels > 0


def classify_nodule(grey: np.ndarray, mask: np.ndarray, model: LoadedModel) -> float:
    tensor = classifier_input(grey, mask, model.manifest.preprocessing)
    return float(malignancy_scores(model)(tensor[np.newaxis])[0])


def malignancy_scores(model: LoadedModel):
    """(B, 2, S, S) classifier inputs → (B,) malignancy probabilities, as decode reads them."""
    manifest = model.manifest

    def score(batch: np.ndarray) -> np.ndarray:
        logits = model.run({manifest.inputs[0].name: batch})[manifest.outputs[0].name]
        probabilities = activate(calibrated(logits, manifest.calibration), manifest.decoding)
        return np.clip(probabilities[:, manifest.decoding.positive_classes].sum(axis=1), 0.0, 1.0)

    return score


def augmented_spread(grey: np.ndarray, mask: np.ndarray, probability: float, model: LoadedModel,
                     operating_point: str | None = None) -> ClassificationUncertainty:
    """The malignancy probability of the frame and mask under the manifest's augmentations, in one batch."""
    manifest, settings = model.manifest, model.manifest.uncertainty
    batch = np.stack([classifier_input(uncertainty.augment(grey, name, settings),
                                       uncertainty.augment(mask, name, settings, mask=True), manifest.preprocessing)
                      for name in settings.augmentations])
    scores = [probability, *malignancy_scores(model)(batch)]
    threshold = operating_point_used(manifest, operating_point).threshold
    return uncertainty.classification(scores, uncertainty.names(settings), threshold, settings)


def saliency_overlay(prepared: PreparedFrame, mask: np.ndarray, model: LoadedModel) -> ArtifactOutput:
    """Occlusion of the image channel only (the nodule outline stays), placed back on the frame's grid."""
    tensor = classifier_input(prepared.grey, mask, model.manifest.preprocessing)
    heat, _ = saliency.occlusion_map(tensor, saliency.log_odds(malignancy_scores(model)), model.manifest.saliency,
                                     channels=(0,))
    source_heat = saliency.to_source_grid(heat, classifier_crop_box(mask), prepared.grey.shape)
    return ArtifactOutput(name=saliency.OVERLAY_NAME, media_type="image/png",
                          data=saliency.overlay_png(prepared.frame, source_heat))


def build_result(probability: float, nodule: OutlinedNodule, spacing: Spacing, manifest: ModelManifest,
                 operating_point: str | None = None, quality: Quality | None = None,
                 spread: ClassificationUncertainty | None = None) -> ThyroidMalignancyResult:
    band = band_for_probability(probability, band_bounds_from_operating_points(manifest.operating_points))
    diameter = None if spacing.mm is None else round(max_diameter_px(nodule.mask, spacing.mm), 2)
    return ThyroidMalignancyResult(
        malignancy_probability=round(probability, 6),
        risk_band=band,
        recommendation=recommend(band, diameter),
        nodule=ThyroidNodule(
            bbox_px=bounding_box(nodule.mask),
            area_px=int(nodule.mask.sum()),
            max_diameter_mm=diameter,
            taller_than_wide=is_taller_than_wide(nodule.mask, spacing.mm),
            source=nodule.source,
        ),
        operating_point=operating_point_used(manifest, operating_point),
        pixel_spacing_mm=spacing.mm,
        spacing_source=spacing.source,
        quality=quality,
        uncertainty=spread,
        detections=list(nodule.detections),
        research_use_only=manifest.research_use_only,
    )


def mask_png(mask: np.ndarray) -> ArtifactOutput:
    """The nodule mask, 255 inside, with the input frame's rows and columns (usable as a later job's ROI)."""
    return ArtifactOutput(name=MASK_ARTIFACT, media_type="image/png",
                          data=_png(Image.fromarray(mask.astype(np.uint8) * 255)))


def overlay_png(frame: np.ndarray, mask: np.ndarray, detections: tuple[ThyroidDetection, ...] = ()) -> ArtifactOutput:
    """The frame with the nodule tinted and outlined; a detector's boxes drawn around it, each with its id."""
    rgb = np.repeat(frame[..., None], 3, axis=-1) if frame.ndim == 2 else frame[..., :3].copy()
    tinted = rgb.astype(np.float32)
    tinted[mask] = 0.7 * tinted[mask] + 0.3 * np.array([255.0, 60.0, 60.0])
    tinted[mask_outline(mask)] = (255.0, 220.0, 0.0)
    image = Image.fromarray(tinted.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for detection in detections:
        x0, y0, x1, y1 = detection.bbox_px
        draw.rectangle((x0, y0, max(x1 - 1, x0), max(y1 - 1, y0)), outline=(0, 200, 255))
        draw.text((x0 + 2, max(y0 - 12, 0)), f"{detection.id}: {detection.score:.2f}", fill=(0, 200, 255))
    return ArtifactOutput(name=OVERLAY_ARTIFACT, media_type="image/png", data=_png(image))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()
