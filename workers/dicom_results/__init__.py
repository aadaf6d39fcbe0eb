"""DICOM results of a finished pipeline: `seg.dcm` / `sr.dcm` artifacts, or notes saying why there are none.

One step after every pipeline (workers/runner.py): it reads the job's DICOM inputs again (headers, and the
pipeline's own artifacts where it needs a mask) and builds the task's objects with highdicom. A result that
cannot be written never fails the job: the reason goes into the job's `notes`.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from app.schemas.jobs import Job
from app.schemas.quality import UngradableResult
from app.schemas.results import DRGradingResult, LungNoduleDetectionResult, ThyroidMalignancyResult
from app.schemas.tasks import TaskName
from workers.dicom_results.common import DICOM_MEDIA_TYPE, ResultNotWritten, encode, read_sources
from workers.pipelines.base import ArtifactOutput, JobInput, PipelineOutput

log = logging.getLogger(__name__)
# highdicom logs every attribute copy, naming source UIDs, at INFO: keep job logs to our own lines.
logging.getLogger("highdicom").setLevel(logging.WARNING)

SEG_ARTIFACT = "seg.dcm"
SR_ARTIFACT = "sr.dcm"
SALIENCY_ARTIFACT = "saliency.dcm"


@dataclass
class DicomResults:
    artifacts: list[ArtifactOutput] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def dicom_results(job: Job, output: PipelineOutput, inputs: list[JobInput]) -> DicomResults:
    if isinstance(output.result, UngradableResult):
        codes = ", ".join(r.code for r in output.result.quality.reasons)
        return DicomResults(notes=[f"Not graded: the input failed the quality gate ({codes}); result.quality says "
                                   "why and what to send instead. No DICOM results are written for it"])
    dicom_paths = [i.path for i in inputs if i.format == "dicom"]
    formats = sorted({i.format.upper() for i in inputs if i.format != "dicom"})
    if not dicom_paths:
        return DicomResults(notes=[
            f"No DICOM SEG or SR: the input was {'/'.join(formats) or 'not DICOM'}, which has no study, series or "
            "patient to attach DICOM results to"
        ])
    builders = BUILDERS.get(job.task)
    if builders is None:
        return DicomResults(notes=[f"No DICOM results are written for task {job.task.value} yet"])
    results = DicomResults()
    for name, build in builders:
        try:
            dataset = build(job, output, dicom_paths)
        except ResultNotWritten as exc:
            results.notes.append(str(exc))
            continue
        except Exception as exc:  # the JSON result stands; only this DICOM object is missing
            log.exception("job %s: %s could not be built (%s)", job.id, name, type(exc).__name__)
            results.notes.append(f"No {name}: it could not be built from this input ({type(exc).__name__})")
            continue
        if dataset is None:  # an optional output the job did not ask for
            continue
        results.artifacts.append(ArtifactOutput(name=name, media_type=DICOM_MEDIA_TYPE, data=encode(dataset)))
    return results


# --- per task -------------------------------------------------------------------------------------


def _lung_sr(job: Job, output: PipelineOutput, paths):
    from workers.dicom_results.sr import lung_nodule_sr

    result: LungNoduleDetectionResult = output.result
    sources = {ds.SOPInstanceUID: ds for ds in read_sources(paths)
               if ds.get("SeriesInstanceUID") == result.series_instance_uid}
    return lung_nodule_sr(result, sources, job.model, job.id)


def _dr_sr(job: Job, output: PipelineOutput, paths):
    from workers.dicom_results.sr import dr_grading_sr

    result: DRGradingResult = output.result
    return dr_grading_sr(result, read_sources(paths[:1])[0], job.model, job.id)


def _thyroid_frame(job: Job) -> int:
    return int(job.options.get("frame") or 0)


def _thyroid_sr(job: Job, output: PipelineOutput, paths):
    from workers.dicom_results.sr import thyroid_malignancy_sr

    result: ThyroidMalignancyResult = output.result
    return thyroid_malignancy_sr(result, read_sources(paths[:1])[0], _thyroid_frame(job), job.model, job.id)


def _thyroid_seg(job: Job, output: PipelineOutput, paths):
    from PIL import Image

    from workers.dicom_results.seg import thyroid_nodule_seg
    from workers.pipelines.thyroid_malignancy import MASK_ARTIFACT

    mask_png = next((a for a in output.artifacts if a.name == MASK_ARTIFACT), None)
    if mask_png is None:
        raise ResultNotWritten("No DICOM SEG: the pipeline wrote no nodule mask")
    with Image.open(io.BytesIO(mask_png.data)) as image:
        mask = np.asarray(image.convert("L")) > 0
    return thyroid_nodule_seg(read_sources(paths[:1])[0], mask, _thyroid_frame(job), job.model, job.id)


def _covid_seg(job: Job, output: PipelineOutput, paths):
    from workers.dicom_results.seg import covid_lesion_seg

    uids = output.mask_sop_instance_uids
    by_uid = {str(ds.SOPInstanceUID): ds for ds in read_sources(paths)}
    if not output.masks or len(set(uids)) != len(uids) or any(uid not in by_uid for uid in uids):
        raise ResultNotWritten("No DICOM SEG: it is written for series of single-frame CT slices only")
    return covid_lesion_seg([by_uid[uid] for uid in uids], output.masks, job.model, job.id)


def _saliency_sc(job: Job, output: PipelineOutput, paths):
    """The saliency overlay (options.explain) as a Secondary Capture beside the source photo or frame."""
    from PIL import Image

    from workers.dicom_results.sc import saliency_sc
    from workers.saliency import OVERLAY_NAME

    overlay = next((a for a in output.artifacts if a.name == OVERLAY_NAME), None)
    if overlay is None:
        return None
    with Image.open(io.BytesIO(overlay.data)) as image:
        pixels = np.asarray(image.convert("RGB"))
    return saliency_sc(read_sources(paths[:1])[0], pixels, job.model, job.id)


Builder = Callable[[Job, PipelineOutput, list], object]
BUILDERS: dict[TaskName, list[tuple[str, Builder]]] = {
    TaskName.LUNG_NODULE_DETECTION: [(SR_ARTIFACT, _lung_sr)],
    TaskName.DR_GRADING: [(SR_ARTIFACT, _dr_sr), (SALIENCY_ARTIFACT, _saliency_sc)],
    TaskName.THYROID_MALIGNANCY: [(SEG_ARTIFACT, _thyroid_seg), (SR_ARTIFACT, _thyroid_sr),
                                  (SALIENCY_ARTIFACT, _saliency_sc)],
    TaskName.COVID_LESION_SEGMENTATION: [(SEG_ARTIFACT, _covid_seg)],
}
