"""Inflating a deflated data set at the door: every byte out, no more, and always an end."""

from __future__ import annotations

import concurrent.futures
import io
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from app.intake.deflated import CHUNK, BudgetExceeded, inflate_if_deflated
from devkit.fundus import dicom_fundus_bytes, make_fundus


def _inflate(path: Path, budget: int = 1 << 30) -> int:
    # A hang is the failure this guards against: run it where it can be given up on.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(inflate_if_deflated, path, budget, "file #1").result(timeout=20)


def _deflated_file(tmp_path: Path, body: bytes, trailer: bytes = b"") -> Path:
    dataset = pydicom.dcmread(io.BytesIO(dicom_fundus_bytes(make_fundus(1).rgb[:8, :8])))
    meta = io.BytesIO()
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    pydicom.filewriter.write_file_meta_info(meta, dataset.file_meta)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    path = tmp_path / "part.dcm"
    path.write_bytes(bytes(128) + b"DICM" + meta.getvalue() + compressor.compress(body) + compressor.flush() + trailer)
    return path


@pytest.mark.parametrize("size", [CHUNK - 1, CHUNK, 2 * CHUNK, 2 * CHUNK + 7])
@pytest.mark.parametrize("trailer", [b"", b"\0"], ids=["no-trailer", "pad-byte"])
def test_inflation_ends_with_every_byte(tmp_path: Path, size: int, trailer: bytes) -> None:
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    path = _deflated_file(tmp_path, body, trailer)
    # Before: a byte after the stream's end (pydicom pads an odd stream) made the loop spin for ever, and a
    # step ending exactly at CHUNK bytes cut the data set short.
    assert _inflate(path) == size
    assert path.read_bytes().endswith(body)
    assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_pydicom_deflated_photograph_inflated_whole(tmp_path: Path, seed: int) -> None:
    dataset = pydicom.dcmread(io.BytesIO(dicom_fundus_bytes(make_fundus(seed).rgb)))
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = tmp_path / "deflated.dcm"
    dataset.save_as(path, enforce_file_format=True)
    assert _inflate(path) > 0
    assert pydicom.dcmread(path).PixelData == dataset.PixelData


def test_inflation_stops_at_the_budget(tmp_path: Path) -> None:
    path = _deflated_file(tmp_path, bytes(50 * CHUNK))
    with pytest.raises(BudgetExceeded):
        _inflate(path, budget=3 * CHUNK)
    assert list(tmp_path.iterdir()) == [path]  # nothing inflated left behind
