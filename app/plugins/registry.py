"""The task registry: what each task is, read from the `medimg.tasks` entry points once per process.

A registration is gateway-safe: the options and result schemas are pydantic classes, while the pipeline,
the DICOM writers, the intake check and the quality gate are "module:attribute" references that only the
side that runs them imports (workers the pipeline, the gateway the intake check), so registering a task
never imports ONNX Runtime.

Plug-in modules must not import `app.schemas.tasks`: that module builds the `TaskName` enum from this
registry while the plug-ins are being loaded.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from importlib.metadata import entry_points
from pkgutil import resolve_name
from typing import Any

from pydantic import BaseModel

from app.schemas.options import TaskOptions

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "medimg.tasks"
TASK_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_REFERENCE_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class TaskRegistryError(Exception):
    """A broken registration: the service refuses to start rather than silently lose a task."""


@dataclass(frozen=True)
class DicomOutput:
    """A DICOM object written after the pipeline: its artifact name and the builder that makes it.

    `builder` is "module:function", called as `function(job, output, dicom_paths)` on the worker; it returns a
    pydicom Dataset or raises `workers.dicom_results.common.ResultNotWritten` saying why there is none.
    """

    artifact: str
    builder: str

    def __post_init__(self) -> None:
        _check_reference("dicom_outputs.builder", self.builder)


@dataclass(frozen=True)
class TaskPlugin:
    """Everything about one task, in one place.

    - `name`: the task's name in the API, the CLI, metrics labels and the Celery queue (kebab-case).
    - `options` / `result`: the pydantic schemas of the job's `options` and of its `result` (OpenAPI shows both).
    - `pipeline`: "module:attribute" of the pipeline class (or a zero-argument factory), imported by workers only.
    - `dicom_outputs`: the DICOM SEG/SR objects written after the pipeline.
    - `intake_check`: optional "module:function" called by the gateway as `function(inputs, manifest, options)`
      after the manifest's `accepts` checks; it raises `app.errors.UnsupportedInput` to refuse an upload.
    - `quality_gate`: optional "module:function" the task's pipeline calls to decide an input is ungradable.
    - `evaluation`: optional "module:attribute" of a `workers.evaluation.base.TaskEvaluation` (label reader,
      figures, plots) that `medimg eval` runs for the task.
    - `shadow_agreement`: optional "module:function" that `medimg eval --shadow` calls as
      `function(jobs, blobs, bootstrap_settings)` to measure how a shadow model's results agree with the served
      ones (a dict of figures). Without one a task whose result lists `findings` (multi-label) gets
      `workers.evaluation.shadow:multilabel_agreement`; any other has no agreement measure.
    """

    name: str
    title: str
    options: type[TaskOptions]
    result: type[BaseModel]
    pipeline: str
    dicom_outputs: tuple[DicomOutput, ...] = ()
    intake_check: str | None = None
    quality_gate: str | None = None
    evaluation: str | None = None
    shadow_agreement: str | None = None

    def __post_init__(self) -> None:
        if not TASK_NAME_PATTERN.match(self.name):
            raise TaskRegistryError(f"task name {self.name!r} must be kebab-case, e.g. 'fracture-detection'")
        if not (isinstance(self.options, type) and issubclass(self.options, TaskOptions)):
            raise TaskRegistryError(f"task {self.name}: options must be a TaskOptions subclass, not {self.options!r}")
        if not (isinstance(self.result, type) and issubclass(self.result, BaseModel)):
            raise TaskRegistryError(f"task {self.name}: result must be a pydantic model class, not {self.result!r}")
        _check_reference(f"task {self.name}: pipeline", self.pipeline)
        for name, reference in (("intake_check", self.intake_check), ("quality_gate", self.quality_gate),
                                ("evaluation", self.evaluation), ("shadow_agreement", self.shadow_agreement)):
            if reference is not None:
                _check_reference(f"task {self.name}: {name}", reference)

    def load_pipeline(self) -> Any:
        """The pipeline object (workers only: this imports the pipeline module and ONNX Runtime with it)."""
        target = resolve_name(self.pipeline)
        return target() if isinstance(target, type) else target


def _check_reference(what: str, reference: str) -> None:
    if not isinstance(reference, str) or not _REFERENCE_PATTERN.match(reference):
        raise TaskRegistryError(f"{what} must be a 'module:attribute' string, not {reference!r}")


@functools.cache
def task_plugins() -> dict[str, TaskPlugin]:
    """Every registered task by name, in name order. Raises TaskRegistryError on a broken or duplicate entry."""
    found: dict[str, TaskPlugin] = {}
    sources: dict[str, str] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        source = f"{entry.dist.name if entry.dist else '?'} ({entry.value})"
        try:
            plugin = entry.load()
        except Exception as exc:
            raise TaskRegistryError(
                f"entry point {entry.name!r} in group {ENTRY_POINT_GROUP} of {source} cannot be loaded: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(plugin, TaskPlugin):
            raise TaskRegistryError(f"entry point {entry.name!r} of {source} is a {type(plugin).__name__}, "
                                    "not an app.plugins.TaskPlugin")
        if plugin.name != entry.name:
            raise TaskRegistryError(f"entry point {entry.name!r} of {source} registers a task named {plugin.name!r}; "
                                    "name the entry point after its task")
        if plugin.name in found:
            if sources[plugin.name] == source:  # the same distribution seen twice on sys.path
                continue
            raise TaskRegistryError(f"task {plugin.name!r} is registered twice: by {sources[plugin.name]} and {source}")
        found[plugin.name] = plugin
        sources[plugin.name] = source
    if not found:
        raise TaskRegistryError(
            f"no task is registered in the {ENTRY_POINT_GROUP!r} entry-point group: install medimg "
            "(`pip install -e .` or its wheel) so that its built-in tasks are registered"
        )
    log.debug("tasks registered: %s", ", ".join(f"{n} from {s}" for n, s in sorted(sources.items())))
    return dict(sorted(found.items()))


def task_plugin(task: str) -> TaskPlugin:
    """The registration of one task (a TaskName member or its value)."""
    return task_plugins()[str(task.value if hasattr(task, "value") else task)]
