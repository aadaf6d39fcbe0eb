"""The task registry: built-in tasks come through the medimg.tasks entry points like any other; broken
registrations stop the service with a message naming the entry point."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from importlib.metadata import EntryPoint, entry_points

import pytest

from app.plugins import ENTRY_POINT_GROUP, TaskPlugin, TaskRegistryError, registry, task_plugins
from app.plugins.builtin import DR_GRADING
from app.schemas.options import DRGradingOptions
from app.schemas.results import DRGradingResult
from app.schemas.tasks import TaskName

SECOND_DR_GRADING = dataclasses.replace(DR_GRADING)
NOT_A_PLUGIN = object()


def test_built_in_tasks_are_registered_through_entry_points() -> None:
    found = {e.name: e for e in entry_points(group=ENTRY_POINT_GROUP) if e.dist and e.dist.name == "medimg"}
    assert set(found) == {"dr-grading", "lung-nodule-detection", "covid-lesion-segmentation", "thyroid-malignancy"}
    assert set(found) <= set(task_plugins()) and {t.value for t in TaskName} == set(task_plugins())
    assert task_plugins()["dr-grading"].result is DRGradingResult


def test_registry_imports_no_worker_code() -> None:
    code = ("import sys; from app.plugins import task_plugins; from app.schemas.jobs import JobPublic; "
            "task_plugins(); print(sorted(m for m in sys.modules if m.split('.')[0] in ('workers', 'onnxruntime')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def _registry_of(monkeypatch, *entries: tuple[str, str]) -> dict[str, TaskPlugin]:
    fake = [EntryPoint(name, value, ENTRY_POINT_GROUP) for name, value in entries]
    monkeypatch.setattr(registry, "entry_points", lambda group: fake)
    return registry.task_plugins.__wrapped__()


def test_registry_refuses_a_task_registered_twice(monkeypatch) -> None:
    with pytest.raises(TaskRegistryError, match="registered twice"):
        _registry_of(monkeypatch, ("dr-grading", "app.plugins.builtin:DR_GRADING"),
                     ("dr-grading", f"{__name__}:SECOND_DR_GRADING"))


def test_registry_names_an_entry_point_that_is_no_plugin(monkeypatch) -> None:
    with pytest.raises(TaskRegistryError, match="'dr-grading' .* is a object, not an app.plugins.TaskPlugin"):
        _registry_of(monkeypatch, ("dr-grading", f"{__name__}:NOT_A_PLUGIN"))


def test_registry_names_an_entry_point_that_cannot_load(monkeypatch) -> None:
    with pytest.raises(TaskRegistryError, match="'fracture' .* cannot be loaded: ModuleNotFoundError"):
        _registry_of(monkeypatch, ("fracture", "no_such_package.plugin:TASK"))


def test_registry_wants_the_entry_point_named_after_its_task(monkeypatch) -> None:
    with pytest.raises(TaskRegistryError, match="registers a task named 'dr-grading'"):
        _registry_of(monkeypatch, ("grading", "app.plugins.builtin:DR_GRADING"))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("name", "Chest_Xray", "must be kebab-case"),
    ("options", dict, "options must be a TaskOptions subclass"),
    ("pipeline", "workers.pipelines.dr_grading.DRGradingPipeline", "'module:attribute'"),
])
def test_task_plugin_refuses_a_malformed_registration(field: str, value, message: str) -> None:
    fields = {"name": "dr-grading", "title": "t", "options": DRGradingOptions, "result": DRGradingResult,
              "pipeline": "workers.pipelines.dr_grading:DRGradingPipeline", field: value}
    with pytest.raises(TaskRegistryError, match=message):
        TaskPlugin(**fields)
