"""Read what intake needs from a DICOM file's header, and refuse files whose pixel data is cut short."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pydicom.uid
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.pixels.utils import get_expected_length

from app.errors import UnsuitableInput

DEFER_BYTES = 64 * 1024


@dataclass(frozen=True)
class DicomHeader:
    modality: str | None
    sop_class_uid: str | None
    sop_instance_uid: str | None
    series_instance_uid: str | None
    transfer_syntax_uid: str | None
    rows: int
    columns: int
    frames: int
    samples_per_pixel: int
    photometric_interpretation: str | None


def read_dicom_header(path: Path, label: str) -> DicomHeader:
    """`label` names the file in error details (an upload index, never the caller's file name)."""
    try:
        return _read_dicom_header(path, label)
    except UnsuitableInput:
        raise
    except Exception as exc:  # a malformed value surfaces as any type once it is used; the answer stays a 422
        raise UnsuitableInput(f"{label} has malformed DICOM attributes ({type(exc).__name__})") from exc


def _read_dicom_header(path: Path, label: str) -> DicomHeader:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Large values (pixel data above all) stay on disk: the header costs kilobytes, whatever the file.
            dataset = pydicom.dcmread(path, force=True, defer_size=DEFER_BYTES)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise UnsuitableInput(f"{label} is not a readable DICOM file ({type(exc).__name__}); it may be truncated") from exc
    except Exception as exc:  # pydicom raises many types on malformed input; none may crash intake
        raise UnsuitableInput(f"{label} is not a readable DICOM file ({type(exc).__name__})") from exc

    raw_pixels = dataset.get_item(0x7FE00010, keep_deferred=True)  # a plain get_item would read it in
    if raw_pixels is None or "PixelData" not in dataset:
        raise UnsuitableInput(
            f"{label} has no pixel data: it is not an image, or the file is truncated"
            f" (SOP class {dataset.get('SOPClassUID', 'unknown')})"
        )
    declared = getattr(raw_pixels, "length", None)
    available = _stored_length(raw_pixels, path)
    if declared not in (None, 0xFFFFFFFF) and available < declared:
        raise UnsuitableInput(
            f"{label}: the pixel data element declares {declared} bytes but the file holds {available};"
            " the file is truncated or its lengths are wrong"
        )
    header = DicomHeader(
        modality=_text(dataset.get("Modality")),
        sop_class_uid=_text(dataset.get("SOPClassUID")),
        sop_instance_uid=_text(dataset.get("SOPInstanceUID")),
        series_instance_uid=_text(dataset.get("SeriesInstanceUID")),
        transfer_syntax_uid=_text(_transfer_syntax(dataset)),
        rows=_int(dataset.get("Rows")),
        columns=_int(dataset.get("Columns")),
        frames=max(_int(dataset.get("NumberOfFrames"), default=1), 1),
        samples_per_pixel=_int(dataset.get("SamplesPerPixel"), default=1),
        photometric_interpretation=_text(dataset.get("PhotometricInterpretation")),
    )
    if header.rows <= 0 or header.columns <= 0:
        raise UnsuitableInput(f"{label} declares an empty image ({header.rows} rows x {header.columns} columns)")
    _check_pixel_data_complete(dataset, raw_pixels, path, header, label)
    return header


def _stored_length(raw_pixels, path: Path) -> int:
    """Bytes of pixel data the file holds: the value itself when it was read, the rest of the file when deferred."""
    if raw_pixels.value is not None:
        return len(raw_pixels.value)
    return max(path.stat().st_size - raw_pixels.value_tell, 0)


def _check_pixel_data_complete(dataset: pydicom.Dataset, raw_pixels, path: Path, header: DicomHeader,
                               label: str) -> None:
    transfer_syntax = _transfer_syntax(dataset)
    if transfer_syntax is not None and transfer_syntax.is_compressed:
        try:
            with path.open("rb") as stream:
                buffer = raw_pixels.value
                if buffer is None:  # deferred: frames are read one at a time from the file, never all at once
                    stream.seek(raw_pixels.value_tell)
                    buffer = stream
                frames = sum(1 for _ in generate_frames(buffer, number_of_frames=header.frames))
        except Exception as exc:
            raise UnsuitableInput(f"{label}: compressed pixel data is malformed or truncated") from exc
        if frames < header.frames:
            raise UnsuitableInput(f"{label}: pixel data holds {frames} of {header.frames} declared frames")
        return
    try:
        expected_bytes = get_expected_length(dataset, unit="bytes")  # knows YBR_FULL_422 and 1-bit packing
        if not isinstance(expected_bytes, int):
            raise TypeError(type(expected_bytes).__name__)
    except Exception as exc:  # malformed values (NumberOfFrames "1A") raise assorted types
        raise UnsuitableInput(f"{label}: the image pixel description is incomplete ({type(exc).__name__})") from exc
    length = getattr(raw_pixels, "length", None)
    stored = length if length not in (None, 0xFFFFFFFF) else _stored_length(raw_pixels, path)
    if stored < expected_bytes:
        raise UnsuitableInput(
            f"{label}: pixel data is truncated ({stored} of {expected_bytes} bytes expected from "
            f"{header.rows}x{header.columns}x{header.frames} frames)"
        )


def _transfer_syntax(dataset: pydicom.Dataset) -> pydicom.uid.UID | None:
    file_meta = getattr(dataset, "file_meta", None)
    return None if file_meta is None else file_meta.get("TransferSyntaxUID")


def _text(value: object) -> str | None:
    return None if value in (None, "") else str(value)


def _int(value: object, default: int = 0) -> int:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
