"""dciodvfy (Debian package dicom3tools): the IOD checker every DICOM object the service writes must pass."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def dciodvfy_errors(data: bytes, tmp_path: Path, name: str = "object.dcm") -> list[str]:
    """The `Error` lines dciodvfy prints for `data`; skips the test when dicom3tools is not installed."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy is missing: apt-get install dicom3tools (.ci/run installs it)")
    path = tmp_path / name
    path.write_bytes(data)
    completed = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (completed.stdout + completed.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]
