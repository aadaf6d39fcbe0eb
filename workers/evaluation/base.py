"""What every task's evaluation takes and gives."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from app.schemas.jobs import Job
from app.schemas.manifest import ModelManifest
from app.schemas.tasks import TaskName
from workers.evaluation.intervals import BootstrapSettings


@dataclass(frozen=True)
class Case:
    """One labelled case: the files sent as one job, its ground truth (JSON-able) and the job's options."""

    case_id: str
    files: tuple[str, ...]
    truth: dict
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LabelOptions:
    """Where the labels are and how to read them (per-task flags of `medimg eval`)."""

    data: Path
    labels: Path
    masks: Path | None = None
    mask_labels: dict[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass
class Scored:
    """A task's figures: metrics by stable name, PNG plots by file name, one CSV row per case, curves."""

    metrics: dict[str, dict]
    plots: dict[str, bytes] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    curves: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BinaryOutcomes:
    """Truth and probability of the output a site operating point thresholds (referable DR, malignancy)."""

    truth: np.ndarray
    probability: np.ndarray


class TaskEvaluation(Protocol):
    task: TaskName

    def read_cases(self, labels: LabelOptions) -> list[Case]: ...

    def record(self, case: Case, job: Job, artifacts: dict[str, bytes], predictions_dir: Path) -> dict:
        """What the scoring needs from a finished job, JSON-able (cached per case so a run can resume)."""

    def score(self, cases: list[Case], records: list[dict], manifest: ModelManifest,
              settings: BootstrapSettings) -> Scored: ...


class Thresholded(TaskEvaluation, Protocol):
    """A task whose decision is a probability at an operating point: a site may choose its own."""

    def binary_outcomes(self, cases: list[Case], records: list[dict]) -> BinaryOutcomes: ...
