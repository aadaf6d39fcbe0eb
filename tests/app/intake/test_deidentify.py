"""With MEDIMG_DEIDENTIFY_INPUTS the stored DICOM carries no patient identifiers; the job still runs."""

from __future__ import annotations

from collections.abc import Iterator

import pydicom
import pytest

from devkit.api import run_job
from devkit.fundus import dicom_fundus_bytes, make_fundus
from devkit.services import Service, service_env

MARKED_NAME = "Zzyzx^Quillonius"


@pytest.fixture(scope="module")
def deidentifying_service(tmp_path_factory) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("deid")
    service = Service(data_dir, service_env(data_dir, MEDIMG_DEIDENTIFY_INPUTS="true",
                                            MEDIMG_RETENTION_INPUT_HOURS="1000"))
    service.start_gateway()
    yield service
    service.stop()


def test_stored_dicom_inputs_are_deidentified(deidentifying_service: Service) -> None:
    job = run_job(deidentifying_service, "dr-grading",
                  [("eye.dcm", dicom_fundus_bytes(make_fundus(4).rgb, patient_name=MARKED_NAME))])
    assert job["status"] == "succeeded"
    stored = list((deidentifying_service.data_dir / "blobs" / "jobs" / job["id"] / "inputs").glob("*.dcm"))
    assert len(stored) == 1
    raw = stored[0].read_bytes()
    assert MARKED_NAME.encode() not in raw and b"Quillonius" not in raw
    dataset = pydicom.dcmread(stored[0])
    assert str(dataset.PatientID) != "TEST-0001" and dataset.PatientBirthDate != "19700101"
