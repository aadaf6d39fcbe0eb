"""DICOM results of a finished pipeline: `seg.dcm` / `sr.dcm` artifacts, or notes saying why there are none.

One step after every pipeline (workers/runner.py): the task's registration names its DICOM outputs and their
builders (workers/dicom_results/builders.py for the shipped tasks), which read the job's DICOM inputs again
(headers, and the pipeline's own artifacts where they need a mask) and build the objects with highdicom. A result that
cannot be written never fails the job: the reason goes into the job's `notes`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pkgutil import resolve_name

from app.plugins import task_plugin
from app.schemas.jobs import Job
from app.schemas.quality import UngradableResult
from workers.dicom_results.common import DICOM_MEDIA_TYPE, ResultNotWritten, encode
from workers.pipelines.base import ArtifactOutput, JobInput, PipelineOutput

log = logging.getLogger(__name__)
# highdicom logs every attribute copy, naming source UIDs, at INFO: keep job logs to our own lines.
logging.getLogger("highdicom").setLevel(logging.WARNING)


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
    outputs = task_plugin(job.task).dicom_outputs
    if not outputs:
        return DicomResults(notes=[f"No DICOM results are written for task {job.task.value}"])
    results = DicomResults()
    for each in outputs:
        name = each.artifact
        try:
            dataset = resolve_name(each.builder)(job, output, dicom_paths)
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
