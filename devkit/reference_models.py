"""Import the scripts that sit beside the reference models (their folders are hyphenated, not packages)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from workers.evaluation.model_folders import MODELS_DIR, REPO_ROOT, model_folder_module

__all__ = ["MODELS_DIR", "REPO_ROOT", "load_reference_module", "reference_model_dir"]


def reference_model_dir(model_id: str) -> Path:
    return MODELS_DIR / model_id


def load_reference_module(model_id: str, module_name: str) -> ModuleType:
    """models/<model_id>/<module_name>.py, loaded once (workers.evaluation.model_folders)."""
    return model_folder_module(model_id, module_name)
