"""The shipped tasks' DICOM SEG/SR builders, named by their registrations (app/plugins/builtin.py).

Each is called as `build(job, output, dicom_paths)` after the pipeline and returns a pydicom Dataset, or raises
ResultNotWritten saying why there is none.
"""

from __future__ import annotations

import io

import numpy as np

from app.schemas.jobs import Job
from app.schemas.results import DRGradingResult, LungNoduleDetectionResult, ThyroidMalignancyResult
from workers.dicom_results.common import ResultNotWritten, read_sources
from workers.pipelines.base import PipelineOutput


def lung_nodule_sr_of_job(job: Job, output: PipelineOutput, paths):
    from workers.dicom_results.sr import lung_nodule_sr

    result: LungNoduleDetectionResult = output.result
    sources = {ds.SOPInstanceUID: ds for ds in read_sources(paths)
               if ds.get("SeriesInstanceUID") == result.series_instance_uid}
    return lung_nodule_sr(result, sources, job.model, job.id)


def dr_grading_sr_of_job(job: Job, output: PipelineOutput, paths):
    from workers.dicom_results.sr import dr_grading_sr

    result: DRGradingResult = output.result
    return dr_grading_sr(result, read_sources(paths[:1])[0], job.model, job.id)


def _thyroid_frame(job: Job) -> int:
    return int(job.options.get("frame") or 0)


def thyroid_malignancy_sr_of_job(job: Job, output: PipelineOutput, paths):
    from workers.dicom_results.sr import thyroid_malignancy_sr

    result: ThyroidMalignancyResult = output.result
    return thyroid_malignancy_sr(result, read_sources(paths[:1])[0], _thyroid_frame(job), job.model, job.id)


def thyroid_nodule_seg_of_job(job: Job, output: PipelineOutput, paths):
    from PIL import Image

    from workers.dicom_results.seg import thyroid_nodule_seg
    from workers.pipelines.thyroid_malignancy import MASK_ARTIFACT

    mask_png = next((a for a in output.artifacts if a.name == MASK_ARTIFACT), None)
    if mask_png is None:
        raise ResultNotWritten("No DICOM SEG: the pipeline wrote no nodule mask")
    with Image.open(io.BytesIO(mask_png.data)) as image:
        mask = np.asarray(image.convert("L")) > 0
    coding = output.segments.get(MASK_ARTIFACT)
    if coding is None:
        raise ResultNotWritten("No DICOM SEG: the segmentation model's manifest gives no decoding.segments coding "
                               "for the nodule")
    return thyroid_nodule_seg(read_sources(paths[:1])[0], mask, _thyroid_frame(job), coding, job.model, job.id)


def covid_lesion_seg_of_job(job: Job, output: PipelineOutput, paths):
    from workers.dicom_results.seg import covid_lesion_seg

    uids = output.mask_sop_instance_uids
    by_uid = {str(ds.SOPInstanceUID): ds for ds in read_sources(paths)}
    if not output.masks or len(set(uids)) != len(uids) or any(uid not in by_uid for uid in uids):
        raise ResultNotWritten("No DICOM SEG: it is written for series of single-frame CT slices only")
    return covid_lesion_seg([by_uid[uid] for uid in uids], output.masks, output.segments, job.model, job.id)


def saliency_sc_of_job(job: Job, output: PipelineOutput, paths):
    """The saliency overlay (options.explain) as a Secondary Capture beside the source photo or frame; None when
    the job did not ask for one."""
    from PIL import Image

    from workers.dicom_results.sc import saliency_sc
    from workers.saliency import OVERLAY_NAME

    overlay = next((a for a in output.artifacts if a.name == OVERLAY_NAME), None)
    if overlay is None:
        return None
    with Image.open(io.BytesIO(overlay.data)) as image:
        pixels = np.asarray(image.convert("RGB"))
    return saliency_sc(read_sources(paths[:1])[0], pixels, job.model, job.id)
