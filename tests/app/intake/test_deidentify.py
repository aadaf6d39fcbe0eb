"""With MEDIMG_DEIDENTIFY_INPUTS the stored DICOM carries no patient identifiers; the job still runs, and a large
multi-frame input is rewritten without its pixel data ever being in the gateway's memory."""

from __future__ import annotations

import gc
import hashlib
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from app.errors import UnsuitableInput
from app.intake.deidentify import deidentify_files
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


def _multiframe(path: Path, frames: int, transfer_syntax: str = ExplicitVRLittleEndian,
                pixel_data: bytes | None = None) -> Dataset:
    """A multi-frame 512x512 12-bit instance carrying the marked patient name, written to `path`."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = SERIES_UIDS
    dataset.PatientName, dataset.PatientID, dataset.StudyDate = MARKED_NAME, "TEST-0001", "20260101"
    dataset.Rows = dataset.Columns = 512
    dataset.NumberOfFrames = frames
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 12, 11, 0
    if pixel_data is None:
        pixel_data = np.random.default_rng(frames).integers(0, 4096, (frames, 512, 512), np.uint16).tobytes()
    dataset.PixelData = pixel_data
    if transfer_syntax != ExplicitVRLittleEndian:
        dataset["PixelData"].VR = "OB"
    dataset.save_as(path, enforce_file_format=True)
    return dataset


SERIES_UIDS = (generate_uid(), generate_uid())


def _marked_name_absent(path: Path) -> bool:
    with path.open("rb") as stream:
        return all(b"Quillonius" not in chunk for chunk in iter(lambda: stream.read(1 << 24), b""))


def test_large_multiframe_deidentified_in_bounded_memory(tmp_path: Path) -> None:
    paths = [tmp_path / "0.dcm", tmp_path / "1.dcm"]
    pixel_digests = [hashlib.sha256(_multiframe(path, 200).PixelData).hexdigest() for path in paths]
    size = paths[0].stat().st_size
    assert size > 100_000_000
    gc.collect()
    tracemalloc.start()
    try:
        deidentify_files(paths, "job-large")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Before: pydicom read each file whole and save_as copied it once more, a peak of 210 MB for this 105 MB file.
    assert peak < 4 << 20, f"peak {peak} bytes for a file of {size}"
    outputs = [pydicom.dcmread(path) for path in paths]
    for output, path, digest in zip(outputs, paths, pixel_digests, strict=True):
        assert _marked_name_absent(path)
        assert str(output.PatientID) != "TEST-0001" and output.StudyDate != "20260101"
        assert output.NumberOfFrames == 200 and output.pixel_array.shape == (200, 512, 512)
        assert hashlib.sha256(output.PixelData).hexdigest() == digest
        assert output.file_meta.MediaStorageSOPInstanceUID == output.SOPInstanceUID
        assert output.SeriesInstanceUID != SERIES_UIDS[1]
    assert outputs[0].SeriesInstanceUID == outputs[1].SeriesInstanceUID  # still one series, under a new UID
    assert outputs[0].SOPInstanceUID != outputs[1].SOPInstanceUID
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.dcm", "1.dcm"]


def test_encapsulated_pixel_data_copied_item_for_item(tmp_path: Path) -> None:
    frames = [bytes([index]) * (1000 + index) + b"\xff\xd9" for index in range(3)]  # odd and even lengths
    encapsulated = encapsulate(frames)
    _multiframe(tmp_path / "jpeg.dcm", 3, JPEGBaseline8Bit, encapsulated)
    deidentify_files([tmp_path / "jpeg.dcm"], "job-jpeg")
    output = pydicom.dcmread(tmp_path / "jpeg.dcm")
    assert output.PixelData == encapsulated
    assert [frame.rstrip(b"\0") for frame in generate_frames(output.PixelData, number_of_frames=3)] == frames
    assert _marked_name_absent(tmp_path / "jpeg.dcm")


def test_elements_after_the_pixel_data_deidentified_too(tmp_path: Path) -> None:
    dataset = _multiframe(tmp_path / "trailing.dcm", 2)
    block = dataset.private_block(0x7FE1, "MEDIMG TEST", create=True)  # a private group after (7FE0,0010)
    block.add_new(0x01, "PN", MARKED_NAME)
    dataset.save_as(tmp_path / "trailing.dcm", enforce_file_format=True)
    deidentify_files([tmp_path / "trailing.dcm"], "job-trailing")
    output = pydicom.dcmread(tmp_path / "trailing.dcm")
    assert _marked_name_absent(tmp_path / "trailing.dcm")
    assert output.private_block(0x7FE1, "MEDIMG TEST")[0x01].value != MARKED_NAME
    assert output.PixelData == dataset.PixelData


def test_implicit_vr_pixel_data_kept_as_words(tmp_path: Path) -> None:
    dataset = _multiframe(tmp_path / "implicit.dcm", 3)
    dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    dataset.save_as(tmp_path / "implicit.dcm", enforce_file_format=True)
    deidentify_files([tmp_path / "implicit.dcm"], "job-implicit")
    output = pydicom.dcmread(tmp_path / "implicit.dcm")
    assert output.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert (output.pixel_array == dataset.pixel_array).all()
    assert _marked_name_absent(tmp_path / "implicit.dcm")


def test_unterminated_encapsulated_pixel_data_refused_and_left_whole(tmp_path: Path) -> None:
    _multiframe(tmp_path / "cut.dcm", 1, JPEGBaseline8Bit, encapsulate([b"\xff\xd8" + bytes(5000) + b"\xff\xd9"]))
    whole = (tmp_path / "cut.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(whole[:-8])  # without the sequence delimiter
    with pytest.raises(UnsuitableInput, match="does not end"):
        deidentify_files([tmp_path / "cut.dcm"], "job-cut")
    assert (tmp_path / "cut.dcm").read_bytes() == whole[:-8]
    assert [p.name for p in tmp_path.iterdir()] == ["cut.dcm"]
