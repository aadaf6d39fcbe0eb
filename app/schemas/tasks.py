"""The tasks the service runs, as registered in the `medimg.tasks` entry-point group (app/plugins).

`TaskName` is an enum built from the registry, so every schema, route parameter and CLI choice that names a
task lists exactly the installed tasks; each task name is also its Celery queue name. The shipped tasks keep
their members (`TaskName.DR_GRADING`); a plug-in's task is `TaskName("its-name")`.
"""

from enum import StrEnum

from app.plugins.registry import task_plugins


def _member_name(task: str) -> str:
    return task.upper().replace("-", "_")


TaskName = StrEnum("TaskName", [(_member_name(name), name) for name in task_plugins()], module=__name__)
TaskName.__doc__ = "A registered task's name"

# The Celery task name the gateway sends and the workers register: one contract, no shared import.
RUN_JOB_TASK = "medimg.run_job"
# Sending results to MEDIMG_EXPORT_DESTINATIONS: its own Celery task and queue (app/export/outbox.py).
EXPORT_TASK = "medimg.export"
EXPORT_QUEUE = "exports"
