"""dcmtk's storescu sends a series (RLE-compressed) to `medimg dicom-listener`, and the job runs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from app.schemas.jobs import JobPriority, JobStatus
from app.storage.jobs import SqliteJobStore
from tests.utils.ct import nodule_scan, synthetic_ct
from tests.utils.services import Process, free_port, service_env

PATIENT = "Listener^Marked"


@pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk's storescu is not installed")
def test_storescu_series_becomes_a_job(tmp_path: Path) -> None:
    scan = nodule_scan(seed=7)
    series_dir = tmp_path / "series"
    series_dir.mkdir()
    paths = synthetic_ct().write_ct_series(scan.hu, scan.grid, series_dir, instance_order="descending",
                                           shuffle_names=True, rng=np.random.default_rng(3))
    for path in paths:  # a compressed transfer syntax on the wire, as many PACS send
        dataset = pydicom.dcmread(path)
        dataset.PatientName = PATIENT
        dataset.compress(RLELossless)
        dataset.save_as(path)

    data_dir, port = tmp_path / "data", free_port()
    listener = Process(
        [sys.executable, "-m", "app.cli", "dicom-listener", "--port", str(port), "--task", "lung-nodule-detection"],
        service_env(data_dir, MEDIMG_DIMSE_QUIET_SECONDS="1",
                    MEDIMG_ROUTING_RULES='[{"calling_ae_title": "PACS1", "priority": "stat"}]'),
        data_dir / "logs" / "listener.log",
    ).start()
    try:
        deadline = time.monotonic() + 60
        while "listening" not in _read(listener.log_path):
            assert time.monotonic() < deadline, _read(listener.log_path)
            time.sleep(0.2)
        sent = subprocess.run(["storescu", "-xr", "-aec", "MEDIMG", "-aet", "PACS1", "+sd", "127.0.0.1", str(port),
                               str(series_dir)], capture_output=True, text=True, timeout=120)
        assert sent.returncode == 0, sent.stderr

        store = SqliteJobStore(data_dir / "jobs.sqlite3")
        job = None
        while time.monotonic() < deadline + 120:
            match = re.search(r"job ([0-9a-f-]{36}) queued from a DIMSE series of (\d+)", _read(listener.log_path))
            if match:
                assert int(match.group(2)) == len(paths)
                job = store.get(match.group(1))
                if job.status.finished:
                    break
            time.sleep(0.5)
        assert job is not None and job.status is JobStatus.SUCCEEDED, _read(listener.log_path)[-3000:]
        assert job.caller == "dimse-PACS1" and job.priority is JobPriority.STAT  # by its calling AE title
        assert len(job.result["nodules"]) >= 1
        assert PATIENT not in _read(listener.log_path)
    finally:
        listener.stop()


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
