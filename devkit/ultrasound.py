"""Synthetic thyroid ultrasound frames as a hospital would send them: PNG screenshots and DICOM US instances."""

from __future__ import annotations

import io

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

from devkit.encoded import jpeg_bytes, png_bytes  # noqa: F401  (callers import them with the case makers)
from devkit.reference_models import load_reference_module

GENERATOR_MODEL = "thyroid-malignancy-reference"
US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"


def synthetic_us():
    return load_reference_module(GENERATOR_MODEL, "synthetic_us")


def make_frame(seed: int = 0, ui: bool | None = None, **features):
    """One synthetic frame (an `UltrasoundItem`); `features` fixes NoduleFeatures fields, e.g. margin=…"""
    generator = synthetic_us()
    rng = np.random.default_rng([9_000_001, seed])
    chosen = None
    if features:
        base = generator.sample_features(rng)
        chosen = generator.NoduleFeatures(**{**base.__dict__, **features})
    return generator.generate_frame(rng, features=chosen, ui=ui)


def held_out_item(index: int):
    """Item `index` of the held-out test split, the frames the cards' metrics are measured on."""
    return synthetic_us().split_item("test", index)




def ultrasound_region(box: tuple[int, int, int, int], spacing_mm: float | tuple[float, float]) -> Dataset:
    """One SequenceOfUltrasoundRegions item: a 2D tissue region in cm (PS3.3 C.8.5.5); `spacing_mm` is one size
    for square pixels or (row_mm, column_mm), i.e. (PhysicalDeltaY, PhysicalDeltaX) in mm."""
    row_mm, column_mm = (spacing_mm, spacing_mm) if isinstance(spacing_mm, int | float) else spacing_mm
    x0, y0, x1, y1 = box
    region = Dataset()
    region.RegionSpatialFormat = 1  # 2D
    region.RegionDataType = 1  # tissue
    region.RegionFlags = 0
    region.RegionLocationMinX0 = x0
    region.RegionLocationMinY0 = y0
    region.RegionLocationMaxX1 = x1 - 1  # inclusive
    region.RegionLocationMaxY1 = y1 - 1
    region.PhysicalUnitsXDirection = 3  # cm
    region.PhysicalUnitsYDirection = 3
    region.PhysicalDeltaX = column_mm / 10.0
    region.PhysicalDeltaY = row_mm / 10.0
    return region


def dicom_us_bytes(
    frames: list[np.ndarray] | np.ndarray,
    regions: list[Dataset] | None = None,
    modality: str = "US",
    pixel_spacing_mm: float | tuple[float, float] | None = None,
    photometric: str | None = None,
) -> bytes:
    """A DICOM US (multi-frame when several frames are given) instance, uncompressed.

    Grey frames become MONOCHROME2; RGB frames become RGB, or YBR_FULL when `photometric` says so.
    `pixel_spacing_mm` is one size for square pixels or PixelSpacing's (row, column) pair.
    """
    stack = [frames] if isinstance(frames, np.ndarray) else list(frames)
    first = stack[0]
    colour = first.ndim == 3
    meta = FileMetaDataset()
    multi = len(stack) > 1
    meta.MediaStorageSOPClassUID = US_MULTIFRAME_IMAGE_STORAGE if multi else US_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientID = "SYNTHETIC"
    ds.Rows, ds.Columns = first.shape[:2]
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if multi:
        ds.NumberOfFrames = len(stack)
    if colour:
        ds.SamplesPerPixel = 3
        ds.PlanarConfiguration = 0
        data = np.stack(stack)
        if photometric == "YBR_FULL":
            data = _rgb_to_ybr_full(data)
        ds.PhotometricInterpretation = photometric or "RGB"
    else:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        data = np.stack(stack)
    ds.PixelData = np.ascontiguousarray(data, dtype=np.uint8).tobytes()
    if regions:
        ds.SequenceOfUltrasoundRegions = Sequence(regions)
    if pixel_spacing_mm is not None:
        ds.PixelSpacing = list(pixel_spacing_mm) if isinstance(pixel_spacing_mm, tuple) else [pixel_spacing_mm] * 2
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _rgb_to_ybr_full(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    return np.stack([y, cb, cr], axis=-1).round().clip(0, 255).astype(np.uint8)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total
