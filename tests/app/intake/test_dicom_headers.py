"""Intake reads the headers of every kind of DICOM file pydicom ships, and refuses broken ones clearly."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from app.errors import UnsuitableInput
from app.intake.dicom_headers import read_dicom_header
from app.intake.formats import sniff_format

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
IMAGES: dict[str, tuple[int, int, int, int]] = {
    # name: (rows, columns, frames, samples per pixel)
    "CT_small.dcm": (128, 128, 1, 1),
    "MR_small_bigendian.dcm": (64, 64, 1, 1),
    "MR_small_implicit.dcm": (64, 64, 1, 1),
    "MR_small_RLE.dcm": (64, 64, 1, 1),
    "MR_small_jp2klossless.dcm": (64, 64, 1, 1),
    "MR_small_jpeg_ls_lossless.dcm": (64, 64, 1, 1),
    "SC_rgb_jpeg_dcmtk.dcm": (100, 100, 1, 3),
    "SC_rgb_rle_2frame.dcm": (100, 100, 2, 3),
    "SC_ybr_full_422_uncompressed.dcm": (100, 100, 1, 3),
    "examples_ybr_color.dcm": (240, 320, 30, 3),
    "examples_palette.dcm": (350, 800, 1, 1),
    "JPEG2000.dcm": (1024, 256, 1, 1),
}


@pytest.mark.parametrize("name", list(IMAGES))
def test_read_dicom_header_real_files(name: str) -> None:
    path = TEST_FILES / name
    assert sniff_format(path) == "dicom"
    header = read_dicom_header(path, "file #1")
    assert (header.rows, header.columns, header.frames, header.samples_per_pixel) == IMAGES[name]


@pytest.mark.parametrize("name", ["MR_truncated.dcm", "rtplan_truncated.dcm", "rtplan.dcm", "test-SR.dcm"])
def test_read_dicom_header_unusable_refused(name: str) -> None:
    with pytest.raises(UnsuitableInput) as caught:
        read_dicom_header(TEST_FILES / name, "file #1")
    assert "file #1" in caught.value.detail


@pytest.mark.parametrize("name", sorted(p.name for p in TEST_FILES.glob("*.dcm")))
def test_read_dicom_header_never_crashes(name: str) -> None:
    """Every shipped file, good or broken, gives a header or a 422-class error, never anything else."""
    try:
        read_dicom_header(TEST_FILES / name, "file #1")
    except UnsuitableInput:
        pass


def test_read_dicom_header_cut_mid_header_refused(tmp_path: Path) -> None:
    data = (TEST_FILES / "CT_small.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:400])
    with pytest.raises(UnsuitableInput, match="truncated|no pixel data|not a readable"):
        read_dicom_header(cut, "file #1")
