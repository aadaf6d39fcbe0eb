"""Each task's evaluation (label reader, figures, plots): one module per shipped task, named by the task's
registration (`TaskPlugin.evaluation`, app/plugins), so a plug-in task brings its own."""

from __future__ import annotations

from pkgutil import resolve_name

from app.plugins import task_plugin
from workers.evaluation.base import TaskEvaluation


def evaluation_for(task: str) -> TaskEvaluation:
    reference = task_plugin(task).evaluation
    if reference is None:
        raise ValueError(f"task {str(getattr(task, 'value', task))!r} registers no evaluation (TaskPlugin.evaluation), "
                         "so `medimg eval` cannot score it")
    return resolve_name(reference)
