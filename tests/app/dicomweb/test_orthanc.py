"""Interoperability with a real PACS: Orthanc pushes a CT study to the service over DICOMweb (STOW-RS),
the routed job runs, and Orthanc pulls the result series back (QIDO-RS / WADO-RS through its DICOMweb client).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from devkit.ct import nodule_scan, synthetic_ct
from tests.utils.pacs import Orthanc, orthanc_available
from devkit.services import Service, service_env

pytestmark = pytest.mark.skipif(not orthanc_available(),
                                reason="Debian packages orthanc and orthanc-dicomweb are not installed")


@pytest.fixture
def routed_service(tmp_path: Path) -> Iterator[Service]:
    rules = json.dumps([{"task": "lung-nodule-detection", "modality": "CT"}])
    service = Service(tmp_path / "medimg", service_env(tmp_path / "medimg", MEDIMG_ROUTING_RULES=rules))
    service.start_gateway()
    yield service
    service.stop()


@pytest.fixture
def orthanc(tmp_path: Path, routed_service: Service) -> Iterator[str]:
    server = Orthanc(tmp_path / "orthanc", dicomweb_servers={"medimg": {"Url": f"{routed_service.url}/dicomweb/"}})
    yield server.start().url
    server.stop()


def test_orthanc_pushes_study_and_pulls_results(orthanc: str, routed_service: Service, tmp_path: Path) -> None:
    scan = nodule_scan(seed=7)
    paths = synthetic_ct().write_ct_series(scan.hu, scan.grid, tmp_path / "series", rng=np.random.default_rng(2))
    for path in paths:
        assert httpx.post(f"{orthanc}/instances", content=path.read_bytes()).status_code == 200
    [study_id] = httpx.get(f"{orthanc}/studies").json()
    study_uid = httpx.get(f"{orthanc}/studies/{study_id}").json()["MainDicomTags"]["StudyInstanceUID"]

    pushed = httpx.post(f"{orthanc}/dicom-web/servers/medimg/stow", json={"Resources": [study_id]}, timeout=120)
    assert pushed.status_code == 200, pushed.text

    deadline, result_series = time.monotonic() + 180, []
    while not result_series:
        assert time.monotonic() < deadline, "no result series appeared for the pushed study"
        found = httpx.get(f"{routed_service.url}/dicomweb/studies/{study_uid}/series", timeout=30)
        if found.status_code == 200:
            result_series = [s["0020000E"]["Value"][0] for s in found.json()]
        time.sleep(1)

    for series_uid in result_series:
        pulled = httpx.post(f"{orthanc}/dicom-web/servers/medimg/retrieve", timeout=120,
                            json={"Resources": [{"Study": study_uid, "Series": series_uid}]})
        assert pulled.status_code == 200, pulled.text
    modalities = {httpx.get(f"{orthanc}/series/{s}").json()["MainDicomTags"].get("Modality")
                  for s in httpx.get(f"{orthanc}/series").json()}
    assert {"CT", "SR"} <= modalities, modalities
