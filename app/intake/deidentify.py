"""Optional de-identification of stored DICOM inputs (MEDIMG_DEIDENTIFY_INPUTS), with dicognito.

Names, ids, dates and UIDs are replaced consistently within a job, so a series stays one series and
geometry is untouched; results then refer to the de-identified UIDs, not the hospital's originals.

Pixel data is never held in memory: a 2 GB multi-frame CT read whole by pydicom would cost the gateway
2 GB per request. The header is read up to the pixel data, the pixel data (native or encapsulated) is
handed to pydicom's writer as a window onto the staged file, which it copies in chunks, and whatever
follows the pixel data is read and de-identified like the header.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.valuerep import BUFFERABLE_VRS, EXPLICIT_VR_LENGTH_32

from app.errors import UnsuitableInput

PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # Float, Double Float and Pixel Data
ITEM, SEQUENCE_DELIMITER = 0xFFFEE000, 0xFFFEE0DD
UNDEFINED_LENGTH = 0xFFFFFFFF


def deidentify_files(paths: list[Path], job_id: str) -> None:
    from dicognito.anonymizer import Anonymizer

    anonymizer = Anonymizer(seed=job_id)
    for path in paths:
        deidentify_file(path, anonymizer)


def deidentify_file(path: Path, anonymizer) -> None:
    """Rewrites `path` de-identified, through a sibling file, so a failure leaves the original whole."""
    rewritten = path.with_suffix(".deidentified")
    try:
        with path.open("rb") as source, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = _read_with_pixel_windows(source, path.stat().st_size, path.name)
            anonymizer.anonymize(dataset)
            dataset.save_as(rewritten)  # the windows are read while `source` is still open
        rewritten.replace(path)
    finally:
        rewritten.unlink(missing_ok=True)


def _read_with_pixel_windows(source: BinaryIO, size: int, label: str) -> Dataset:
    dataset = pydicom.dcmread(source, force=True, stop_before_pixels=True)  # rewinds to the pixel element
    implicit_vr, little_endian = dataset.original_encoding
    while source.tell() < size:
        element = _pixel_element(source, size, implicit_vr, little_endian, dataset, label)
        dataset[element.tag] = element
        # The elements after the pixel data (private ones, signatures, padding) go through dicognito too.
        following = read_dataset(source, implicit_vr, little_endian,
                                 stop_when=lambda tag, vr, length: tag in PIXEL_TAGS)
        for tag in following.keys():
            dataset[tag] = following.get_item(tag)
    return dataset


def _pixel_element(source: BinaryIO, size: int, implicit_vr: bool, little_endian: bool, dataset: Dataset,
                   label: str) -> DataElement:
    """The pixel element at the file's position, its value a window onto the file; the file is left after it."""
    endian = "<" if little_endian else ">"
    head = source.read(8)
    if len(head) < 8:
        raise _malformed(label, "the pixel data element is cut short")
    group, element, length = struct.unpack(f"{endian}HHL", head)
    tag = group << 16 | element
    vr = None
    if not implicit_vr:
        vr = head[4:6].decode("latin-1")
        (length,) = struct.unpack(f"{endian}H", head[6:8])
        if vr in EXPLICIT_VR_LENGTH_32:
            (length,) = struct.unpack(f"{endian}L", source.read(4))
    value_start = source.tell()
    if length == UNDEFINED_LENGTH:
        value_end = _encapsulated_end(source, size, endian, label)
        source.seek(value_end + 8)  # past the sequence delimiter, which the writer adds again
    else:
        value_end = value_start + length
        if value_end > size:
            raise _malformed(label, f"the pixel data declares {length} bytes, more than the file holds")
        source.seek(value_end)
    if vr not in BUFFERABLE_VRS:  # implicit VR, or UN
        vr = dictionary_VR(tag)
        if vr == "OB or OW":
            vr = "OW" if length != UNDEFINED_LENGTH and (dataset.get("BitsAllocated") or 8) > 8 else "OB"
    return DataElement(tag, vr, FileWindow(source, value_start, value_end - value_start),
                       is_undefined_length=length == UNDEFINED_LENGTH)


def _encapsulated_end(source: BinaryIO, size: int, endian: str, label: str) -> int:
    """Where the sequence delimiter of encapsulated pixel data starts, found by skipping item after item."""
    while True:
        at = source.tell()
        head = source.read(8)
        if len(head) < 8:
            raise _malformed(label, "the encapsulated pixel data does not end (no sequence delimiter)")
        group, element, length = struct.unpack(f"{endian}HHL", head)
        tag = group << 16 | element
        if tag == SEQUENCE_DELIMITER:
            return at
        if tag != ITEM or length == UNDEFINED_LENGTH or at + 8 + length > size:
            raise _malformed(label, f"the encapsulated pixel data holds a malformed item at byte {at}")
        source.seek(at + 8 + length)


def _malformed(label: str, reason: str) -> UnsuitableInput:
    return UnsuitableInput(f"{label} cannot be de-identified (MEDIMG_DEIDENTIFY_INPUTS): {reason}")


class FileWindow(io.BufferedIOBase):
    """`length` bytes of an open file from `start`, as a buffer of their own: what pydicom writes in chunks."""

    def __init__(self, file: BinaryIO, start: int, length: int) -> None:
        super().__init__()
        self._file, self._start, self._length, self._position = file, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._length}[whence]
        self._position = min(max(base + offset, 0), self._length)
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        remaining = self._length - self._position
        wanted = remaining if size is None or size < 0 else min(size, remaining)
        self._file.seek(self._start + self._position)
        data = self._file.read(wanted)
        self._position += len(data)
        return data

    read1 = read
