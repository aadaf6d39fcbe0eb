"""One pipeline per task: load → preprocess → infer → decode → outputs.

Which pipeline serves a task is the task's registration (app/plugins): `pipeline_for` imports it on first use.
"""

from __future__ import annotations

import functools

from app.plugins import task_plugin
from workers.pipelines.base import Pipeline


@functools.cache
def pipeline_for(task: str) -> Pipeline:
    """The task's pipeline object, made once per process (pipelines keep no per-job state)."""
    return task_plugin(task).load_pipeline()
