"""Pulmonary nodule detection on one CT series: findings in patient millimetres.

load (CT series → HU volume + geometry) → preprocess (resample to the manifest's spacing, HU window) →
infer (sliding window, batched patches) → decode (connected components of the probability map, 3D NMS)
→ outputs (findings mapped back to voxel and patient coordinates; an overlay PNG per finding; a display PNG
per slice for the review page).
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
from app.schemas.results import KeySlice, LungNoduleDetectionResult, NoduleFinding, OperatingPointUsed
from app.schemas.tasks import TaskName
from workers.decoding import activate
from workers.imaging.ct_resample import ResampledVolume, resample_to_spacing, window
from workers.imaging.ct_display import display_slices, lung_window
from workers.imaging.ct_series import CTVolume, load_ct_series
from workers.onnx import LoadedModel
from workers.pipelines.base import ArtifactOutput, JobInput, PipelineOutput, StageTimer
from workers.sliding_window import sliding_window

PATCH_BATCH = 2
OVERLAY_MIN_SIDE = 512


@dataclass(frozen=True)
class Candidate:
    """A finding in the resampled volume: centre as fractional (slice, row, column) index."""

    score: float
    centre: tuple[float, float, float]
    diameter_mm: float
    low: tuple[int, int, int]  # voxel bounding box of the component, inclusive
    high: tuple[int, int, int]


class LungNoduleDetectionPipeline:
    task = TaskName.LUNG_NODULE_DETECTION
    stages = ("load", "preprocess", "infer", "decode", "outputs")

    def run(self, inputs: list[JobInput], options: LungNoduleDetectionOptions, model: LoadedModel,
            stages: StageTimer) -> PipelineOutput:
        manifest = model.manifest
        with stages("load"):
            ct = load_ct_series([i.path for i in inputs if i.format == "dicom"], options.series_instance_uid,
                                manifest.accepts.modalities or ("CT",), task=f"task {self.task.value!r}")
        with stages("preprocess"):
            resampled = preprocess(ct, manifest)
        with stages("infer"):
            probability = sliding_window_probability(resampled.volume, manifest, onnx_runner(model))
        with stages("decode"):
            candidates = decode_components(probability, resampled.spacing_mm, manifest)
            del probability
            result = build_result(candidates, ct, resampled, manifest, options)
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
                 options: LungNoduleDetectionOptions) -> LungNoduleDetectionResult:
    used = score_threshold(manifest, options)
    geometry = ct.geometry
    findings = []
    for candidate in candidates:
        if candidate.score < used.threshold:
            continue
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
