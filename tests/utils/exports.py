"""Helpers for export tests: DICOM inputs with SEG and SR results, the job's exports, what the archive holds."""

from __future__ import annotations

import io
import time

import httpx
import pydicom
from pydicom.uid import RLELossless

from tests.utils.keys import auth
from tests.utils.pacs import Orthanc
from devkit.services import Service
from devkit.ultrasound import dicom_us_bytes, make_frame
from workers.imaging.ultrasound import to_grey


def _headers(caller: str | None) -> dict[str, str]:
    return auth(caller) if caller else {}


def wait_job_as(service: Service, job_id: str, caller: str | None, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = httpx.get(f"{service.url}/v1/jobs/{job_id}", params={"wait": 10}, headers=_headers(caller),
                        timeout=30).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        assert time.monotonic() < deadline, job


def us_instance(seed: int, compressed: bool = False) -> bytes:
    """A DICOM US frame from which a thyroid job writes both a SEG and an SR; RLE-compressed if asked."""
    data = dicom_us_bytes(to_grey(make_frame(seed).frame))
    if not compressed:
        return data
    dataset = pydicom.dcmread(io.BytesIO(data))
    dataset.compress(RLELossless)  # as many PACS send: the peer below accepts uncompressed data only
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def wait_export(service: Service, job_id: str, destination: str, until, caller: str | None = "clinic-a",
                timeout: float = 60) -> dict:
    """The job's export to `destination` once `until(export)` holds."""
    deadline = time.monotonic() + timeout
    while True:
        job = httpx.get(f"{service.url}/v1/jobs/{job_id}", headers=_headers(caller), timeout=30).json()
        export = next((e for e in job.get("exports", []) if e["destination"] == destination), None)
        if export is not None and until(export):
            return export
        assert time.monotonic() < deadline, job.get("exports")
        time.sleep(0.2)


def sent(export: dict) -> bool:
    return export["status"] == "sent"


def result_uids(service: Service, job: dict, caller: str | None = "clinic-a") -> dict[str, str]:
    """SOP Instance UID of each DICOM artifact (seg.dcm, sr.dcm), read back through the API."""
    uids = {}
    for artifact in job["artifacts"]:
        if artifact["media_type"] == "application/dicom":
            response = httpx.get(f"{service.url}{artifact['url']}", headers=_headers(caller), timeout=30)
            uids[artifact["name"]] = pydicom.dcmread(io.BytesIO(response.content)).SOPInstanceUID
    assert set(uids) == {"seg.dcm", "sr.dcm"}, job["artifacts"]
    return uids


def referenced_uids(element) -> set[str]:
    """Every ReferencedSOPInstanceUID (0008,1155) anywhere in a DICOM JSON document."""
    found = set()
    if isinstance(element, dict):
        for tag, value in element.items():
            if tag == "00081155":
                found.update(value.get("Value", []))
            else:
                found |= referenced_uids(value)
    elif isinstance(element, list):
        for item in element:
            found |= referenced_uids(item)
    return found


def assert_study_viewable(orthanc: Orthanc, study_uid: str, source_uid: str, results: dict[str, str]) -> None:
    """QIDO-RS finds the source, SEG and SR series in the study; SEG and SR reference instances Orthanc holds."""
    qido = httpx.get(f"{orthanc.dicomweb}/studies/{study_uid}/series", timeout=30)
    assert qido.status_code == 200, qido.text
    series = {s["0020000E"]["Value"][0]: s["00080060"]["Value"][0] for s in qido.json()}
    assert sorted(series.values()) == ["SEG", "SR", "US"], series
    held = set()
    for series_uid in series:
        instances = httpx.get(f"{orthanc.dicomweb}/studies/{study_uid}/series/{series_uid}/instances", timeout=30)
        held |= {i["00080018"]["Value"][0] for i in instances.json()}
    assert held == {source_uid, *results.values()}, held
    for series_uid, modality in series.items():
        if modality in ("SEG", "SR"):
            metadata = httpx.get(f"{orthanc.dicomweb}/studies/{study_uid}/series/{series_uid}/metadata",
                                 timeout=30).json()
            references = referenced_uids(metadata)
            assert source_uid in references, (modality, references)
            assert references <= held, (modality, references - held)
