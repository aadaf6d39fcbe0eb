"""Detect a file's format from its first bytes; the file name and the declared content type are not trusted."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

SniffedFormat = Literal["dicom", "png", "jpeg", "zip"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")
DICOM_PREAMBLE_LENGTH = 128


def sniff_format(path: Path) -> SniffedFormat | None:
    with path.open("rb") as stream:
        head = stream.read(DICOM_PREAMBLE_LENGTH + 4)
    if head[DICOM_PREAMBLE_LENGTH : DICOM_PREAMBLE_LENGTH + 4] == b"DICM":
        return "dicom"
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith(JPEG_SIGNATURE):
        return "jpeg"
    if head.startswith(ZIP_SIGNATURES):
        return "zip"
    if _looks_like_dicom_without_preamble(head):
        return "dicom"
    return None


def _looks_like_dicom_without_preamble(head: bytes) -> bool:
    """Old files and some PACS exports start straight with a group 0x0008 element (no preamble, no meta)."""
    if len(head) < 8:
        return False
    little = head[0:2] == b"\x08\x00"
    big = head[0:2] == b"\x00\x08"
    return little or big
