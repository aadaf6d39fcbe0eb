"""COVID-19 lesion segmentation on one CT series: lesion masks on the source grid, volumes, lung involvement.

load (CT series → HU volume + geometry, `workers.imaging.ct_series`) → lungs (classical mask, left and right,
`workers.imaging.lungs`) → preprocess (per slice: the slice and its neighbours as channels, the manifest's
HU window, resized in-plane to the manifest's pixel spacing or target size) → infer (the whole slice, or
overlapping patches of the manifest's patch size blended back; as many per run as the manifest's batch size)
→ decode (softmax, argmax resized back to the source rows and columns: labels
background / ground-glass / consolidation; small components removed; only lesions in the lungs kept)
→ outputs (figures from the true voxel spacing; NIfTI label volume; mask and overlay PNG per affected slice;
a display PNG per slice for the review page).

This module is the sequence; the steps live in `workers.pipelines.covid`: `inference` (2.5D slice stacks,
batched, patched), `decode`, `figures` and `zones` (volumes, involvement, lung-zone thirds), `artifacts` (NIfTI
and PNG writers), `segments` (the DICOM SEG's masks and codes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from app.schemas.manifest import ModelManifest
from app.schemas.options import CovidLesionSegmentationOptions
from app.schemas.tasks import TaskName
from workers import uncertainty
from workers.imaging.ct_series import load_ct_series
from workers.imaging.lungs import LungMask, segment_lungs
from workers.onnx import LoadedModel
from workers.pipelines.base import JobContext, JobInput, PipelineOutput, StageTimer, ungradable
from workers.pipelines.covid.artifacts import uncertainty_artifacts, write_artifacts
from workers.pipelines.covid.decode import decode_labels
from workers.pipelines.covid.figures import build_result
from workers.pipelines.covid.inference import lesion_disagreement, onnx_runner, predict_labels
from workers.pipelines.covid.segments import SegmentMasks
from workers.quality.ct import check_ct


class CovidLesionSegmentationPipeline:
    task = TaskName.COVID_LESION_SEGMENTATION
    stages = ("load", "quality", "lungs", "infer", "uncertainty", "decode", "outputs")

    def run(self, inputs: list[JobInput], options: CovidLesionSegmentationOptions, model: LoadedModel,
            stages: StageTimer, context: JobContext | None = None) -> PipelineOutput:
        manifest = model.manifest
        with stages("load"):
            ct = load_ct_series([i.path for i in inputs if i.format == "dicom"], options.series_instance_uid,
                                manifest.accepts.modalities or ("CT",), task=f"task {self.task.value!r}")
        with stages("quality"):
            quality = check_ct(ct.hu, ct.geometry, manifest.quality.ct)
        if not quality.gradable:
            return ungradable(quality, manifest)
        with stages("lungs"):
            lungs = segment_lungs(ct.hu, ct.affine, ct.spacing_mm)
        with stages("infer"):
            raw = predict_labels(ct.hu, ct.spacing_mm, manifest, onnx_runner(model), ct.geometry.slice_positions_mm)
        disagreement, augmentations = None, []
        if uncertainty.wanted(options.uncertainty, manifest.uncertainty, volume=True):
            with stages("uncertainty"):
                disagreement, augmentations = lesion_disagreement(ct, raw, manifest, onnx_runner(model))
        with stages("decode"):
            labels, lungs = decode_labels(raw, lungs, ct.affine, manifest)  # in place: `raw` is `labels` now
            result = build_result(ct, labels, lungs, manifest, quality)
            if disagreement is not None:
                result.uncertainty = uncertainty.segmentation(
                    disagreement, int(np.count_nonzero(labels)), float(np.prod(ct.spacing_mm)) / 1000.0, augmentations)
        with stages("outputs"):
            artifacts = write_artifacts(ct, labels, result.affected_slices)
            if disagreement is not None:
                artifacts += uncertainty_artifacts(ct, labels, disagreement, len(augmentations) - 1)
        masks = SegmentMasks(labels, lungs, manifest)
        return PipelineOutput(result=result, artifacts=artifacts, masks=masks,
                              mask_sop_instance_uids=list(ct.sop_instance_uids), segments=masks.codings(manifest))


@dataclass(frozen=True)
class ArrayCase:
    """Arrays enough to run the steps without DICOM (evaluation, benchmarks)."""

    hu: np.ndarray
    affine: np.ndarray
    spacing_mm: tuple[float, float, float]


def segment_arrays(case: ArrayCase, manifest: ModelManifest,
                   run: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, LungMask]:
    """lungs → infer → decode on arrays: the pipeline's steps in its order."""
    lungs = segment_lungs(case.hu, case.affine, case.spacing_mm)
    raw = predict_labels(case.hu, case.spacing_mm, manifest, run)
    return decode_labels(raw, lungs, case.affine, manifest)
