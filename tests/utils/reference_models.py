"""Import the scripts that sit beside the reference models (their folders are hyphenated, not packages)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO_ROOT / "models"


def reference_model_dir(model_id: str) -> Path:
    return MODELS_DIR / model_id


def load_reference_module(model_id: str, module_name: str) -> ModuleType:
    """Load models/<model_id>/<module_name>.py once, registered under a name that cannot collide."""
    qualified = f"reference_models.{model_id.replace('-', '_')}.{module_name}"
    if qualified in sys.modules:
        return sys.modules[qualified]
    path = reference_model_dir(model_id) / f"{module_name}.py"
    spec = importlib.util.spec_from_file_location(qualified, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    # Registered before executing so dataclasses and pickling (worker processes) can resolve the module.
    sys.modules[qualified] = module
    spec.loader.exec_module(module)
    return module
