"""Import the scripts that sit beside a reference model, `models/<model-id>/<module>.py`.

Model folders are named by model id, hyphens and all, so they are not packages. Each module is loaded once and
registered as `reference_models.<model_id>.<module>`, the one name under which tests, training and evaluation
scripts and the COVID generator (which renders its chest with the lung-nodule phantom) all find it: dataclasses
and pickled arguments of worker processes resolve their module by that name.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

# The checkout's model repository: these scripts are development tools, run from a clone, never in an image.
REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO_ROOT / "models"


def model_folder_module(model_id: str, module_name: str) -> ModuleType:
    """models/<model_id>/<module_name>.py, loaded once."""
    qualified = f"reference_models.{model_id.replace('-', '_')}.{module_name}"
    if qualified in sys.modules:
        return sys.modules[qualified]
    path = MODELS_DIR / model_id / f"{module_name}.py"
    spec = importlib.util.spec_from_file_location(qualified, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    # Registered before executing so dataclasses and pickling (worker processes) can resolve the module.
    sys.modules[qualified] = module
    spec.loader.exec_module(module)
    return module
