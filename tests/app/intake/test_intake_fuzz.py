"""Fuzzing intake with mutated real files: every answer is a documented 4xx or an accepted job.

Mutations of pydicom's shipped test files and of PNG/JPEG photos go through the real intake (staging,
format detection, header reading, checks). Inputs intake accepts must then decode or fail cleanly.
"""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.config import Settings
from app.errors import BadInputError, MedimgError
from app.intake.service import Intake
from app.schemas.tasks import TaskName
from app.storage.factory import make_blob_store, make_job_store, make_model_repository
from tests.utils.fundus import dicom_fundus_bytes, jpeg_bytes, make_fundus, png_bytes
from tests.utils.reference_models import MODELS_DIR
from workers.imaging.photo import load_photo
from workers.local import _RunLater

DOCUMENTED = {413, 415, 422}
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
SEEDS = [p.read_bytes() for p in sorted(TEST_FILES.glob("*.dcm")) if p.stat().st_size < 400_000]
SMALL_FUNDUS = make_fundus(seed=1, size=256).rgb
SEEDS += [dicom_fundus_bytes(SMALL_FUNDUS), png_bytes(SMALL_FUNDUS), jpeg_bytes(SMALL_FUNDUS)]


@pytest.fixture(scope="module")
def intake(tmp_path_factory) -> Intake:
    settings = Settings(data_dir=tmp_path_factory.mktemp("fuzz"), model_repository=MODELS_DIR)
    return Intake(settings, make_model_repository(settings), make_job_store(settings), make_blob_store(settings),
                  _RunLater())


@st.composite
def mutated_files(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        operation = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite-length"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if operation == "flip" and data:
            data[position] ^= draw(st.integers(1, 255))
        elif operation == "truncate":
            del data[position:]
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif operation == "delete":
            del data[position : position + draw(st.integers(1, 64))]
        else:  # plant a huge or odd 32-bit value where lengths and dimensions live
            data[position : position + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\xf0\xff\xff\x7f",
                                                                  b"\x01\x00\x00\x00", b"\x00\x00\x00\x00"]))
    return bytes(data)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=mutated_files())
def test_intake_mutated_files_only_documented_answers(intake: Intake, data: bytes) -> None:
    try:
        job, _ = intake.accept(TaskName.DR_GRADING, [io.BytesIO(data)], None, caller="fuzz")
    except MedimgError as exc:
        assert exc.status in DOCUMENTED, f"{exc.status} {exc.code}: {exc.detail}"
        return
    stored = job.inputs[0]
    try:
        image = load_photo(intake.blobs.local_path(stored.key), stored.format)
        assert image.dtype.name == "uint8" and image.ndim in (2, 3)
    except BadInputError:
        pass
    finally:
        intake.jobs.delete(job.id)
        intake.blobs.delete_prefix(f"jobs/{job.id}")
