"""Tasks are plug-ins: one `TaskPlugin` per task, found through the `medimg.tasks` entry-point group.

The four shipped tasks register there too (pyproject.toml), so a task from an installed package takes the
same path as a built-in one.
"""

from app.plugins.registry import (
    ENTRY_POINT_GROUP,
    DicomOutput,
    TaskPlugin,
    TaskRegistryError,
    task_plugin,
    task_plugins,
)

__all__ = ["ENTRY_POINT_GROUP", "DicomOutput", "TaskPlugin", "TaskRegistryError", "task_plugin", "task_plugins"]
