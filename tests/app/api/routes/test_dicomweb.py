"""DICOMweb with dicomweb-client: STOW-RS a CT series, the routed job runs, QIDO-RS/WADO-RS find its SR."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from devkit.api import wait_job
from devkit.ct import nodule_scan, synthetic_ct
from devkit.services import Service, service_env

RULES = [{"modality": "CT", "series_description": "(?i)chest", "task": "lung-nodule-detection"},
         {"attributes": {"Modality": "CT"}, "priority": "stat"}]


@pytest.fixture(scope="module")
def dicomweb_service(tmp_path_factory) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("dicomweb")
    service = Service(data_dir, service_env(data_dir, MEDIMG_ROUTING_RULES=json.dumps(RULES)))
    service.start_gateway()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def ct_datasets(tmp_path_factory) -> list[pydicom.Dataset]:
    scan = nodule_scan(seed=3, matrix=128, z_extent_mm=40.0, diameters=(10.0,))
    paths = synthetic_ct().write_ct_series(scan.hu, scan.grid, tmp_path_factory.mktemp("ct"),
                                           rng=np.random.default_rng(2))
    return [pydicom.dcmread(p) for p in paths]


def test_store_routes_the_series_and_the_result_sr_is_found_and_retrieved(dicomweb_service, ct_datasets) -> None:
    session = requests.Session()
    seen: list[requests.Response] = []
    session.hooks["response"].append(lambda response, *args, **kwargs: seen.append(response))
    client = DICOMwebClient(url=f"{dicomweb_service.url}/dicomweb", session=session)
    study_uid = ct_datasets[0].StudyInstanceUID

    response = client.store_instances(ct_datasets)  # multipart/related; type="application/dicom"

    stored = response.ReferencedSOPSequence
    assert {i.ReferencedSOPInstanceUID for i in stored} == {ds.SOPInstanceUID for ds in ct_datasets}
    assert "FailedSOPSequence" not in response
    assert seen[-1].headers["Content-Type"] == "application/dicom+json"
    (job_id,) = seen[-1].headers["X-Medimg-Job-Ids"].split(",")  # one series, one job
    job = wait_job(dicomweb_service, job_id, timeout=150)
    assert job["status"] == "succeeded", job
    assert job["task"] == "lung-nodule-detection" and job["priority"] == "stat"
    assert "sr.dcm" in {a["name"] for a in job["artifacts"]}

    studies = client.search_for_studies(search_filters={"StudyInstanceUID": study_uid})
    assert [pydicom.Dataset.from_json(s).StudyInstanceUID for s in studies] == [study_uid]
    (series,) = client.search_for_series(study_uid)
    series_uid = pydicom.Dataset.from_json(series).SeriesInstanceUID
    assert series_uid != ct_datasets[0].SeriesInstanceUID
    (instance,) = client.search_for_instances(study_uid, series_uid)
    sop_uid = pydicom.Dataset.from_json(instance).SOPInstanceUID

    sr = client.retrieve_instance(study_uid, series_uid, sop_uid)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.StudyInstanceUID == study_uid
    (metadata,) = client.retrieve_series_metadata(study_uid, series_uid)
    assert pydicom.Dataset.from_json(metadata).SOPInstanceUID == sop_uid


def _multipart(parts: list[bytes], boundary: str = "b0undary") -> bytes:
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                    for p in parts)
    return body + b"--" + boundary.encode() + b"--\r\n"


def test_store_chunked_with_task_parameter_returns_job_id_header(dicomweb_service, tmp_path) -> None:
    from devkit.ultrasound import dicom_us_bytes, make_frame

    body = _multipart([dicom_us_bytes(make_frame(4).frame, pixel_spacing_mm=0.1)])

    def chunks():
        for start in range(0, len(body), 65536):
            yield body[start:start + 65536]

    response = httpx.post(
        f"{dicomweb_service.url}/dicomweb/studies", params={"task": "thyroid-malignancy"}, content=chunks(),
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b0undary'}, timeout=60,
    )

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    (job_id,) = response.headers["X-Medimg-Job-Ids"].split(",")
    job = wait_job(dicomweb_service, job_id)
    assert job["status"] == "succeeded", job
    assert {"seg.dcm", "sr.dcm"} <= {a["name"] for a in job["artifacts"]}


def test_store_unrouted_series_is_409_with_failed_sop_sequence(dicomweb_service) -> None:
    from devkit.ultrasound import dicom_us_bytes, make_frame

    body = _multipart([dicom_us_bytes(make_frame(5).frame)])
    response = httpx.post(f"{dicomweb_service.url}/dicomweb/studies", content=body, timeout=60,
                          headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b0undary'})
    assert response.status_code == 409
    document = response.json()
    assert document["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]


def test_store_wrong_media_type_is_415(dicomweb_service) -> None:
    response = httpx.post(f"{dicomweb_service.url}/dicomweb/studies", content=b"{}", timeout=30,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 415


def test_store_truncated_body_is_400(dicomweb_service) -> None:
    body = _multipart([b"DICM"])[:-20]
    response = httpx.post(f"{dicomweb_service.url}/dicomweb/studies", content=body, timeout=30,
                          headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b0undary'})
    assert response.status_code == 400
    assert response.json()["code"] == "malformed-multipart"
