"""Finding a case's files in a data folder as public data sets lay them out."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

IMAGE_SUFFIXES = (".png", ".jpeg", ".jpg", ".dcm", ".dicom", "")


class LabelError(ValueError):
    """A label file or data folder that cannot be read as the task's format; the message says what to fix."""


def image_for(data: Path, name: str) -> Path:
    """`name` with or without its extension (EyePACS and APTOS list names without one)."""
    for suffix in IMAGE_SUFFIXES:
        for candidate in (data / f"{name}{suffix}", data / f"{name}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    raise LabelError(f"no image named {name!r} (.png, .jpeg, .jpg, .dcm) in {data}")


def series_inputs(data: Path) -> dict[str, tuple[Path, ...]]:
    """SeriesInstanceUID → files, for each sub-folder or ZIP of `data` (one series each, LUNA16 style)."""
    found: dict[str, tuple[Path, ...]] = {}
    for entry in sorted(data.iterdir()):
        if entry.is_dir():
            files = tuple(sorted(p for p in entry.rglob("*") if p.is_file()))
            uid = _series_uid(files)
        elif entry.suffix.lower() == ".zip":
            files = (entry,)
            uid = _zip_series_uid(entry)
        else:
            continue
        if uid is not None:
            found[uid] = files
    return found


def _series_uid(files: tuple[Path, ...]) -> str | None:
    for path in files:
        try:
            return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
                       .SeriesInstanceUID)
        except (InvalidDicomError, AttributeError, OSError):
            continue
    return None


def _zip_series_uid(path: Path) -> str | None:
    import zipfile

    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            if member.is_dir():
                continue
            with archive.open(member) as stream:
                try:
                    return str(pydicom.dcmread(stream, stop_before_pixels=True,
                                               specific_tags=["SeriesInstanceUID"]).SeriesInstanceUID)
                except (InvalidDicomError, AttributeError, OSError):
                    continue
    return None
