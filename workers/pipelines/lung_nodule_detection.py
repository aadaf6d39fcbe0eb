"""Pulmonary nodule detection on one CT series: findings in patient millimetres.

load (CT series → HU volume + geometry) → preprocess (resample to the manifest's spacing, HU window) →
infer (sliding window, batched patches) → decode (connected components of the probability map, or the boxes
of a `box-detection` model; 3D NMS in mm across patches) → outputs (findings mapped back to voxel and patient
coordinates; an overlay PNG per finding; a display PNG per slice for the review page).
Every number that shapes the result comes from the manifest.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from app.errors import ModelError
from app.schemas.manifest import ModelManifest
from app.schemas.options import LungNoduleDetectionOptions
from app.schemas.quality import DetectionUncertainty, Quality
from app.schemas.results import KeySlice, LungNoduleDetectionResult, NoduleFinding, OperatingPointUsed
from app.schemas.tasks import TaskName
from workers import uncertainty
from workers.decoding import Boxes, activate, decode_boxes, suppress_overlaps
from workers.imaging.ct_resample import ResampledVolume, resample_to_spacing, window
from workers.imaging.ct_display import display_slices, lung_window
from workers.imaging.ct_series import CTVolume, load_ct_series
from workers.onnx import LoadedModel
from workers.pipelines.base import ArtifactOutput, JobContext, JobInput, PipelineOutput, StageTimer, ungradable
from workers.quality.ct import check_ct
from workers.sliding_window import pad_to, patch_corners, sliding_window

PATCH_BATCH = 2
OVERLAY_MIN_SIDE = 512


@dataclass(frozen=True)
class Candidate:
    """A finding in the resampled volume: centre as fractional (slice, row, column) index."""

    score: float
    centre: tuple[float, float, float]
    diameter_mm: float
    low: tuple[float, float, float]  # voxel bounding box, inclusive (voxel-centre indices)
    high: tuple[float, float, float]


class LungNoduleDetectionPipeline:
    task = TaskName.LUNG_NODULE_DETECTION
    stages = ("load", "quality", "preprocess", "infer", "uncertainty", "decode", "outputs")

    def run(self, inputs: list[JobInput], options: LungNoduleDetectionOptions, model: LoadedModel,
            stages: StageTimer, context: JobContext | None = None) -> PipelineOutput:
        manifest = model.manifest
        with stages("load"):
            ct = load_ct_series([i.path for i in inputs if i.format == "dicom"], options.series_instance_uid,
                                manifest.accepts.modalities or ("CT",), task=f"task {self.task.value!r}")
        with stages("quality"):
            quality = check_ct(ct.hu, ct.geometry, manifest.quality.ct)
        if not quality.gradable:
            return ungradable(quality, manifest)
        with stages("preprocess"):
            resampled = preprocess(ct, manifest)
        boxes = manifest.decoding.kind == "box-detection"
        with stages("infer"):
            if boxes:
                found = sliding_window_boxes(resampled.volume, manifest, model)
            else:
                probability = sliding_window_probability(resampled.volume, manifest, onnx_runner(model))
        augmented: dict[str, np.ndarray] = {}
        # Test-time augmentation re-runs the probability map; a box-detection model has none to re-run.
        if not boxes and uncertainty.wanted(options.uncertainty, manifest.uncertainty, volume=True):
            with stages("uncertainty"):
                augmented = augmented_probabilities(resampled.volume, manifest, onnx_runner(model))
        with stages("decode"):
            if boxes:
                candidates = candidates_from_boxes(found, resampled.spacing_mm, manifest)
            else:
                candidates = decode_components(probability, resampled.spacing_mm, manifest)
                del probability
            result = build_result(candidates, ct, resampled, manifest, options, quality,
                                  score_spreads(candidates, augmented, manifest) if augmented else None)
        with stages("outputs"):
            artifacts = [nodule_overlay(ct, finding) for finding in result.nodules]
            artifacts += [ArtifactOutput(name, "image/png", png) for name, png in display_slices(ct.hu)]
        return PipelineOutput(result=result, artifacts=artifacts)


# --- steps ----------------------------------------------------------------------------------------


def preprocess(ct: CTVolume, manifest: ModelManifest) -> ResampledVolume:
    spec = manifest.preprocessing
    if spec.target_spacing_mm is None or spec.window_hu is None:
        raise ModelError(f"{manifest.id}: the manifest needs preprocessing.target_spacing_mm and window_hu")
    resampled = resample_to_spacing(ct.hu, ct.spacing_mm, ct.geometry.slice_positions_mm, spec.target_spacing_mm)
    window(resampled.volume, spec.window_hu)
    return resampled


def onnx_runner(model: LoadedModel) -> Callable[[np.ndarray], np.ndarray]:
    input_name, output_name = model.manifest.inputs[0].name, model.manifest.outputs[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        return model.run({input_name: batch})[output_name]

    return run


def sliding_window_probability(volume: np.ndarray, manifest: ModelManifest,
                               run: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Probability map over the whole volume from overlapping patches, blended with Gaussian weights."""
    spec = manifest.preprocessing
    patch = tuple(int(v) for v in (spec.patch_size or manifest.inputs[0].shape[2:]))

    def predict(batch: np.ndarray) -> np.ndarray:  # (B, 1, *patch): one channel in, the nodule probability out
        logits = run(batch)
        if logits.shape[-3:] != patch:
            raise ModelError(f"the model returned {logits.shape} for patches of {patch}")
        return activate(logits.reshape(batch.shape), manifest.decoding).astype(np.float32)

    probability = sliding_window(volume[np.newaxis, np.newaxis], patch, spec.patch_overlap or 0.0, predict,
                                 spec.batch_size or PATCH_BATCH)
    return probability[0, 0]


def augmented_probabilities(volume: np.ndarray, manifest: ModelManifest,
                            run: Callable[[np.ndarray], np.ndarray]) -> dict[str, np.ndarray]:
    """The probability map of each flipped copy of the volume, flipped back (volumes take the flips only)."""
    maps = {}
    for name in uncertainty.volume_augmentations(manifest.uncertainty):
        flipped = np.ascontiguousarray(uncertainty.unflip(volume, name))
        maps[name] = uncertainty.unflip(sliding_window_probability(flipped, manifest, run), name)
    return maps


def score_spreads(candidates: list[Candidate], maps: dict[str, np.ndarray],
                  manifest: ModelManifest) -> DetectionUncertainty:
    """Each candidate's score (its peak) beside the peak of each augmented map within its box; ids follow
    `build_result`, which keeps the candidates at or above the threshold in this order."""
    spreads = []
    for candidate in candidates:
        box = tuple(slice(lo, hi + 1) for lo, hi in zip(candidate.low, candidate.high, strict=True))
        scores = [candidate.score, *(float(m[box].max()) for m in maps.values())]
        spreads.append(uncertainty.finding_spread(len(spreads) + 1, scores, manifest.uncertainty))
    return DetectionUncertainty(augmentations=[uncertainty.ORIGINAL, *maps], findings=spreads,
                                low_confidence_spread=manifest.uncertainty.low_confidence_spread)


def decode_components(probability: np.ndarray, spacing_zyx: tuple[float, float, float],
                      manifest: ModelManifest) -> list[Candidate]:
    """Connected components above the candidate threshold; then 3D non-maximum suppression."""
    from scipy import ndimage

    decoding = manifest.decoding
    if decoding.kind != "segmentation-components":
        raise ModelError(f"{manifest.id}: decoding kind {decoding.kind!r} is not one this pipeline reads")
    threshold = decoding.candidate_threshold if decoding.candidate_threshold is not None else 0.5
    labels, count = ndimage.label(probability >= threshold, structure=np.ones((3, 3, 3), bool))
    voxel_volume = float(np.prod(spacing_zyx))
    candidates = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        grown = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, labels.shape, strict=True))
        own = labels[grown] == index
        if decoding.min_component_voxels and int(own.sum()) < decoding.min_component_voxels:
            continue
        # The component plus a one-voxel rim (not other components): the soft edge carries volume too.
        region = ndimage.binary_dilation(own, np.ones((3, 3, 3), bool)) & ((labels[grown] == 0) | own)
        prob = probability[grown]
        weights = prob * region
        mass = float(weights.sum())
        zz, yy, xx = np.nonzero(region)
        w = weights[zz, yy, xx]
        centre = tuple(float((coord * w).sum() / mass) + s.start for coord, s in zip((zz, yy, xx), grown, strict=True))
        diameter = (6.0 * mass * voxel_volume / math.pi) ** (1.0 / 3.0)
        candidates.append(Candidate(
            score=float(prob[own].max()),
            centre=centre,  # type: ignore[arg-type]
            diameter_mm=diameter,
            low=tuple(s.start for s in box),  # type: ignore[arg-type]
            high=tuple(s.stop - 1 for s in box),  # type: ignore[arg-type]
        ))
    return non_maximum_suppression(candidates, spacing_zyx, decoding.nms_radius_mm or 0.0)


def sliding_window_boxes(volume: np.ndarray, manifest: ModelManifest, model: LoadedModel) -> Boxes:
    """A box-detection model's boxes over the whole volume, one patch per run (box outputs have no batch
    axis), each shifted by its patch's corner into the volume's voxel grid and clipped to the volume."""
    spec = manifest.preprocessing
    patch = tuple(int(v) for v in (spec.patch_size or manifest.inputs[0].shape[2:]))
    padded_shape, corners = patch_corners(volume.shape, patch, spec.patch_overlap or 0.0)
    padded = pad_to(volume[np.newaxis, np.newaxis], padded_shape, 0.0)  # 0: the HU window's floor, air
    parts = []
    for corner in corners:
        region = (slice(None), slice(None)) + tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True))
        outputs = model.run({manifest.inputs[0].name: np.ascontiguousarray(padded[region], dtype=np.float32)})
        parts.append(decode_boxes(outputs, manifest).shifted(corner))
    limit = np.asarray(volume.shape, dtype=np.float64)
    return Boxes(
        low=np.clip(np.concatenate([p.low for p in parts]), 0, limit),
        high=np.clip(np.concatenate([p.high for p in parts]), 0, limit),
        scores=np.concatenate([p.scores for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
    )


def candidates_from_boxes(boxes: Boxes, spacing_zyx: tuple[float, float, float],
                          manifest: ModelManifest) -> list[Candidate]:
    """Each box [low, high) becomes a finding centred in it, its diameter that of the sphere with the volume of
    the box's inscribed ellipsoid; then 3D NMS in millimetres, across patches: by IoU first when the manifest
    gives `nms_iou`, then by centre distance."""
    spacing = np.asarray(spacing_zyx, dtype=np.float64)
    kept = suppress_overlaps(boxes.low * spacing, boxes.high * spacing, boxes.scores, manifest.decoding.nms_iou,
                             None) if manifest.decoding.nms_iou is not None else np.arange(len(boxes))
    candidates = []
    for low, high, score in zip(boxes.low[kept], boxes.high[kept], boxes.scores[kept], strict=True):
        extent_mm = (high - low) * spacing
        if np.any(extent_mm <= 0):
            continue
        candidates.append(Candidate(
            score=float(score),
            centre=tuple(float(v) for v in (low + high - 1) / 2),  # type: ignore[arg-type]
            diameter_mm=float(np.prod(extent_mm) ** (1.0 / 3.0)),
            low=tuple(float(v) for v in low),  # type: ignore[arg-type]
            high=tuple(float(v) for v in high - 1),  # type: ignore[arg-type]
        ))
    return non_maximum_suppression(candidates, spacing_zyx, manifest.decoding.nms_radius_mm or 0.0)


def non_maximum_suppression(candidates: list[Candidate], spacing_zyx: tuple[float, float, float],
                            radius_mm: float) -> list[Candidate]:
    """Best first; a candidate whose centre lies within `radius_mm` (or a kept finding's radius) of a kept
    finding is dropped."""
    kept: list[Candidate] = []
    spacing = np.asarray(spacing_zyx)
    for candidate in sorted(candidates, key=lambda c: c.score, reverse=True):
        centre = np.asarray(candidate.centre) * spacing
        if all(np.linalg.norm(centre - np.asarray(k.centre) * spacing) > max(radius_mm, k.diameter_mm / 2)
               for k in kept):
            kept.append(candidate)
    return kept


def score_threshold(manifest: ModelManifest, options: LungNoduleDetectionOptions) -> OperatingPointUsed:
    if options.score_threshold is not None:
        return OperatingPointUsed(name="caller", threshold=options.score_threshold, overridden=True)
    point = manifest.operating_point()
    return OperatingPointUsed(name=point.name, threshold=point.threshold, sensitivity=point.sensitivity,
                              specificity=point.specificity)


def build_result(candidates: list[Candidate], ct: CTVolume, resampled: ResampledVolume, manifest: ModelManifest,
                 options: LungNoduleDetectionOptions, quality: Quality | None = None,
                 spreads: DetectionUncertainty | None = None) -> LungNoduleDetectionResult:
    used = score_threshold(manifest, options)
    geometry = ct.geometry
    findings = []
    kept_spreads = []
    for candidate, spread in zip(candidates, spreads.findings if spreads else [None] * len(candidates), strict=True):
        if candidate.score < used.threshold:
            continue
        if spread is not None:
            kept_spreads.append(spread.model_copy(update={"id": len(findings) + 1}))
        column, row, slice_index = resampled.to_input_voxel(*candidate.centre, geometry)
        centre_mm = geometry.voxel_to_patient(column, row, slice_index)
        corners = [
            geometry.voxel_to_patient(*resampled.to_input_voxel(z, y, x, geometry))
            for z in (candidate.low[0] - 0.5, candidate.high[0] + 0.5)
            for y in (candidate.low[1] - 0.5, candidate.high[1] + 0.5)
            for x in (candidate.low[2] - 0.5, candidate.high[2] + 0.5)
        ]
        corners.append(centre_mm)
        key = int(np.clip(round(slice_index), 0, geometry.n_slices - 1))
        header = geometry.slices[key]
        findings.append(NoduleFinding(
            id=len(findings) + 1,
            score=round(candidate.score, 4),
            center_mm=tuple(round(float(v), 2) for v in centre_mm),
            center_voxel=(round(column, 2), round(row, 2), round(slice_index, 2)),
            diameter_mm=round(candidate.diameter_mm, 2),
            bbox_mm=(tuple(round(float(v), 2) for v in np.min(corners, axis=0)),
                     tuple(round(float(v), 2) for v in np.max(corners, axis=0))),
            key_slice=KeySlice(index=key, sop_instance_uid=header.sop_instance_uid,
                               frame_number=None if header.frame is None else header.frame + 1),
        ))
    return LungNoduleDetectionResult(
        series_instance_uid=ct.series_instance_uid,
        nodules=findings,
        spacing_mm=tuple(round(float(v), 4) for v in ct.spacing_mm),
        n_slices=geometry.n_slices,
        operating_point=used,
        warnings=list(ct.warnings),
        quality=quality,
        uncertainty=spreads.model_copy(update={"findings": kept_spreads}) if spreads else None,
        research_use_only=manifest.research_use_only,
    )


def nodule_overlay(ct: CTVolume, finding: NoduleFinding) -> ArtifactOutput:
    """The key slice in a lung window with the finding circled and labelled: nodule-<id>.png."""
    from PIL import Image, ImageDraw

    grey = lung_window(ct.hu[finding.key_slice.index]).astype(np.uint8)
    image = Image.fromarray(grey).convert("RGB")
    scale = max(1, math.ceil(OVERLAY_MIN_SIDE / max(image.size)))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.BILINEAR)
    column, row, _ = finding.center_voxel
    cx, cy = (column + 0.5) * scale, (row + 0.5) * scale
    column_spacing, row_spacing, _ = ct.spacing_mm
    rx = (finding.diameter_mm / 2 / column_spacing + 4) * scale
    ry = (finding.diameter_mm / 2 / row_spacing + 4) * scale
    draw = ImageDraw.Draw(image)
    draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), outline=(255, 64, 32), width=max(2, scale))
    label = f"{finding.id}: {finding.diameter_mm:.0f} mm, score {finding.score:.2f}"
    tx, ty = min(cx + rx + 4, image.width - 8 * len(label)), max(cy - ry - 14, 2)
    draw.text((max(tx, 2) + 1, ty + 1), label, fill=(0, 0, 0))
    draw.text((max(tx, 2), ty), label, fill=(255, 220, 64))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return ArtifactOutput(name=f"nodule-{finding.id}.png", media_type="image/png", data=buffer.getvalue())
