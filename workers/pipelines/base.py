"""What every pipeline takes and gives, and the stage timer that reports progress and durations."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from pydantic import BaseModel

from app.schemas.manifest import ModelManifest, SegmentCoding
from app.schemas.options import TaskOptions
from app.schemas.quality import Quality, UngradableResult
from app.storage.blobs import BlobStore
from app.storage.jobs import JobStore
from workers.onnx import LoadedModel


@dataclass(frozen=True)
class JobInput:
    path: Path
    format: str


@dataclass(frozen=True)
class JobContext:
    """Who runs the job and the stores, for a pipeline that reads earlier jobs' artifacts (e.g. a caller's ROI).

    The runner always passes it as `context=`; a pipeline run on its own (tests, evaluation) may get None.
    """

    job_id: str
    caller: str
    jobs: JobStore
    blobs: BlobStore


@dataclass(frozen=True)
class ArtifactOutput:
    name: str
    media_type: str
    data: bytes


@dataclass
class PipelineOutput:
    result: BaseModel
    artifacts: list[ArtifactOutput] = field(default_factory=list)
    # Label masks over the source slices (name → bool (slices, rows, columns)) and the SOPInstanceUID of
    # each slice, for the DICOM SEG written after the pipeline.
    masks: Mapping[str, np.ndarray] = field(default_factory=dict)
    mask_sop_instance_uids: list[str] = field(default_factory=list)
    # How the SEG writes each mask (by the same name): the model's classes from its manifest's
    # decoding.segments, anything else the pipeline segments itself from the pipeline.
    segments: Mapping[str, SegmentCoding] = field(default_factory=dict)


def ungradable(quality: Quality, manifest: ModelManifest) -> PipelineOutput:
    """The output for an input the task's quality gate refused: the job succeeds with the reasons, no grade."""
    return PipelineOutput(result=UngradableResult(task=manifest.task, quality=quality,
                                                  research_use_only=manifest.research_use_only))


@dataclass
class StageTimer:
    """`with stages("preprocess"):` times a stage and tells the progress callback when it starts."""

    on_stage: Callable[[str], None] | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.on_stage is not None:
            self.on_stage(name)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


class Pipeline(Protocol):
    task: str  # the TaskName (a str) it serves
    stages: tuple[str, ...]

    def run(
        self, inputs: list[JobInput], options: TaskOptions, model: LoadedModel, stages: StageTimer,
        context: JobContext | None = None,
    ) -> PipelineOutput: ...
