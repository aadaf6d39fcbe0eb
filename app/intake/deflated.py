"""Deflated Explicit VR Little Endian DICOM, inflated once at the door under a byte budget.

pydicom inflates a deflated data set whole in memory, unbounded: 1 MB on the wire can be 1 GB. Intake
streams the inflation to disk instead, counting the bytes against the upload limit, and keeps the file as
Explicit VR Little Endian (the same data set, re-encoded without deflate). Nothing after intake, worker
included, ever sees the deflated form.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from app.errors import UnsuitableInput

CHUNK = 1 << 20


def inflate_if_deflated(path: Path, budget: int, label: str) -> int:
    """Rewrites a deflated file in place as Explicit VR Little Endian; returns the bytes it inflated.

    Raises `BudgetExceeded` when the inflated data set would exceed `budget` bytes (the caller passes what is
    left of the upload limit and answers PayloadTooLarge), `UnsuitableInput` for a corrupt stream."""
    with path.open("rb") as source:
        try:
            preamble = read_preamble(source, force=True)
            if preamble is None:
                return 0  # no file meta, so no transfer syntax that could say "deflated"
            meta = _read_file_meta_info(source)
            if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
                return 0
        except Exception:
            return 0  # the header reader judges malformed files and answers with the reason
        try:
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            header = preamble + b"DICM" + _encoded_meta(meta)
        except Exception as exc:
            raise UnsuitableInput(f"{label} has malformed file meta information ({type(exc).__name__})") from exc
        inflated_path = path.with_suffix(".inflated")
        inflated = 0
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            with inflated_path.open("wb") as sink:
                sink.write(header)
                while packed := source.read(CHUNK):
                    # max_length bounds each step's output, so a 1000:1 chunk never lands in memory whole.
                    data = inflater.decompress(packed, CHUNK)
                    while True:
                        inflated += len(data)
                        if inflated > budget:
                            raise BudgetExceeded(inflated)
                        sink.write(data)
                        if inflater.eof:
                            break  # bytes after the stream's end (padding) stay in unconsumed_tail: never inflated
                        if not inflater.unconsumed_tail and len(data) < CHUNK:
                            break  # all input used and no output held back (a full step may hold more)
                        data = inflater.decompress(inflater.unconsumed_tail, CHUNK)
                    if inflater.eof:
                        break
            if not inflater.eof:
                raise UnsuitableInput(f"{label}: the deflated data set is truncated (the stream does not end)")
        except zlib.error as exc:
            inflated_path.unlink(missing_ok=True)
            raise UnsuitableInput(f"{label}: the deflated data set is corrupt ({exc})") from exc
        except BaseException:
            inflated_path.unlink(missing_ok=True)
            raise
    inflated_path.replace(path)
    return inflated


class BudgetExceeded(Exception):
    def __init__(self, inflated: int) -> None:
        super().__init__(inflated)
        self.inflated = inflated


def _encoded_meta(meta) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue()
