"""Synthetic fundus photographs as the files a hospital would send: PNG, JPEG and DICOM."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    PYDICOM_IMPLEMENTATION_UID,
    generate_uid,
)

from devkit.encoded import jpeg_bytes, png_bytes  # noqa: F401  (callers import them with the case makers)
from devkit.reference_models import load_reference_module

OPHTHALMIC_PHOTOGRAPHY_8BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


@dataclass(frozen=True)
class Fundus:
    rgb: np.ndarray
    grade: int


def make_fundus(seed: int = 0, grade: int | None = None, size: int | None = None) -> Fundus:
    synthetic = load_reference_module("dr-grading-reference", "synthetic_fundus")
    item = synthetic.generate_fundus(np.random.default_rng(seed), grade=grade, size=size)
    return Fundus(rgb=item.rgb, grade=item.grade)


def lesions_in_one_quadrant(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A healthy eye with the lesions of the same eye at grade 3 pasted into its upper-right quadrant only:
    the photo, and the mask of the pixels the lesions changed."""
    synthetic = load_reference_module("dr-grading-reference", "synthetic_fundus")
    # One seed renders the same eye at every grade; only the lesions differ.
    healthy = synthetic.generate_fundus(np.random.default_rng(seed), grade=0, size=448).rgb
    severe = synthetic.generate_fundus(np.random.default_rng(seed), grade=3, size=448).rgb
    lesion = np.abs(severe.astype(int) - healthy.astype(int)).max(axis=-1) > 20
    rows, cols = lesion.shape
    lesion[rows // 2:] = False
    lesion[:, :cols // 2] = False
    photo = healthy.copy()
    photo[lesion] = severe[lesion]
    return photo, lesion




def _base_dataset(sop_class: str, transfer_syntax: str, modality: str, patient_name: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientName = patient_name
    ds.PatientID = "TEST-0001"
    ds.PatientBirthDate = "19700101"
    ds.StudyDate = "20260101"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    return ds


def _to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dicom_fundus_bytes(rgb: np.ndarray, patient_name: str = "Doe^Jane") -> bytes:
    """Ophthalmic Photography, uncompressed RGB, as a fundus camera stores it."""
    ds = _base_dataset(OPHTHALMIC_PHOTOGRAPHY_8BIT, ExplicitVRLittleEndian, "OP", patient_name)
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    return _to_bytes(ds)


def dicom_fundus_ybr_jpeg_bytes(rgb: np.ndarray, patient_name: str = "Doe^Jane") -> bytes:
    """JPEG Baseline with YBR_FULL_422 colour, the usual lossy form of ophthalmic photographs."""
    ds = _base_dataset(OPHTHALMIC_PHOTOGRAPHY_8BIT, JPEGBaseline8Bit, "OP", patient_name)
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"  # what libjpeg's 4:2:0/4:2:2 YCbCr stream holds
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"
    ds.PixelData = encapsulate([jpeg_bytes(rgb, quality=95)])
    ds["PixelData"].VR = "OB"
    return _to_bytes(ds)


def dicom_mr_volume_bytes(frames: int = 4, size: int = 256) -> bytes:
    """A multi-frame MR volume: well-formed DICOM that must not be sent to DR grading."""
    ds = _base_dataset(MR_IMAGE_STORAGE, ExplicitVRLittleEndian, "MR", "Doe^John")
    ds.Rows = ds.Columns = size
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.zeros((frames, size, size), dtype=np.uint16).tobytes()
    return _to_bytes(ds)


def big_png(seed: int = 3, side: int = 6000) -> bytes:
    """A photograph large enough to keep its job running for seconds, to be caught in the act (fault tests).
    PNG, because a JPEG this size is decoded at 1/8 scale for a 224-px model in milliseconds."""
    buffer = io.BytesIO()
    Image.fromarray(make_fundus(seed).rgb).resize((side, side)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
