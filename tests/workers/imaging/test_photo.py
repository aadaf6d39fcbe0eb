"""Photographs decode to display RGB whatever the DICOM transfer syntax or colour space."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from app.errors import BadInputError
from workers.imaging.photo import load_photo

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _reference() -> np.ndarray:
    # pydicom's RGB test image: red/green/blue/white bands; the compressed variants encode the same picture.
    return load_photo(TEST_FILES / "SC_rgb_rle.dcm", "dicom")


@pytest.mark.parametrize(
    ("name", "tolerance"),
    [
        ("SC_rgb_rle.dcm", 0),  # RLE, lossless
        ("SC_rgb_gdcm_KY.dcm", 0),  # JPEG 2000 lossless
        ("SC_rgb_jpeg_gdcm.dcm", 0),  # JPEG lossless process 14
        ("SC_rgb_jpeg_dcmtk.dcm", 12),  # JPEG baseline, YBR_FULL
        ("SC_rgb_dcmtk_+eb+cy+np.dcm", 12),  # JPEG baseline, YBR_FULL_422
        ("SC_rgb_jls_lossy_line.dcm", 12),  # JPEG-LS near-lossless
        ("SC_ybr_full_422_uncompressed.dcm", 3),  # uncompressed YBR_FULL_422
    ],
)
def test_load_photo_dicom_colour_matches_reference(name: str, tolerance: int) -> None:
    image = load_photo(TEST_FILES / name, "dicom")
    assert image.dtype == np.uint8 and image.shape == (100, 100, 3)
    difference = np.abs(image.astype(int) - _reference().astype(int))
    assert np.median(difference) <= tolerance


def test_load_photo_big_endian_matches_little_endian() -> None:
    little = load_photo(TEST_FILES / "SC_rgb_small_odd.dcm", "dicom")
    big = load_photo(TEST_FILES / "SC_rgb_small_odd_big_endian.dcm", "dicom")
    np.testing.assert_array_equal(little, big)


def test_load_photo_palette_colour_becomes_rgb() -> None:
    image = load_photo(TEST_FILES / "examples_palette.dcm", "dicom")
    assert image.shape == (350, 800, 3) and image.dtype == np.uint8


def test_load_photo_multiframe_picks_frame() -> None:
    first = load_photo(TEST_FILES / "examples_ybr_color.dcm", "dicom", frame=0)
    last = load_photo(TEST_FILES / "examples_ybr_color.dcm", "dicom", frame=29)
    assert first.shape == last.shape == (240, 320, 3)
    assert not np.array_equal(first, last)
    with pytest.raises(BadInputError, match="frame 30"):
        load_photo(TEST_FILES / "examples_ybr_color.dcm", "dicom", frame=30)


def test_load_photo_monochrome1_is_inverted(tmp_path: Path) -> None:
    dataset = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    mono2 = load_photo(TEST_FILES / "CT_small.dcm", "dicom")
    dataset.PhotometricInterpretation = "MONOCHROME1"
    for keyword in ("WindowCenter", "WindowWidth"):
        if keyword in dataset:
            delattr(dataset, keyword)
    path = tmp_path / "mono1.dcm"
    dataset.save_as(path)
    mono1 = load_photo(path, "dicom")
    assert np.corrcoef(mono1.ravel().astype(float), mono2.ravel().astype(float))[0, 1] < -0.9


def test_load_photo_corrupt_data_is_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    with pytest.raises(BadInputError):
        load_photo(path, "png")


@pytest.mark.parametrize("min_side", [None, 64])
def test_camera_jpeg_rotated_by_exif_orientation_loads_upright(tmp_path, min_side) -> None:
    # A 400x200 landscape frame, stored by the camera as 200x400 with Orientation 6 (rotate 90° clockwise).
    upright = np.zeros((200, 400, 3), np.uint8)
    upright[:, :100] = (255, 0, 0)  # red on the left when viewed upright
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # how the sensor wrote it
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "camera.jpg"
    stored.save(path, format="JPEG", quality=95, exif=exif)

    image = load_photo(path, "jpeg", min_side=min_side)

    assert image.shape[:2] == ((200, 400) if min_side is None else (100, 200))
    left, right = image[:, : image.shape[1] // 8].mean(axis=(0, 1)), image[:, -image.shape[1] // 8 :].mean(axis=(0, 1))
    assert left[0] > 200 and left[1] < 60 and right.max() < 60


def _png(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["rgb", "grey", "rgb-transparent-colour", "grey-2-bit", "grey-16-bit", "palette"])
def test_png_pixels_equal_pillows_whichever_decoder_reads_them(tmp_path, kind) -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    image, options = {
        "rgb": (Image.fromarray(rgb), {}),
        "grey": (Image.fromarray(rgb[..., 0]), {}),
        "rgb-transparent-colour": (Image.fromarray(rgb), {"transparency": (1, 2, 3)}),
        "grey-2-bit": (Image.fromarray(rgb[..., 0] // 64 * 85), {"bits": 2}),
        "grey-16-bit": (Image.fromarray(rgb[..., 0].astype(np.uint16) * 257), {}),
        "palette": (Image.fromarray(rgb).quantize(16), {}),
    }[kind]
    path = tmp_path / "photo.png"
    path.write_bytes(_png(image, **options))
    with Image.open(path) as reference:
        expected = np.asarray(reference.convert("RGB") if reference.mode == "P" else reference)
    if expected.dtype != np.uint8:
        expected = np.round(expected.astype(np.float32) / 257).astype(np.uint8)

    np.testing.assert_array_equal(load_photo(path, "png"), expected)


def test_png_with_exif_orientation_loads_upright(tmp_path) -> None:
    upright = np.zeros((20, 40, 3), np.uint8)
    upright[:, :10] = 255  # white on the left when viewed upright
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.png"
    path.write_bytes(_png(Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90), exif=exif))

    np.testing.assert_array_equal(load_photo(path, "png"), upright)


def test_truncated_png_is_bad_input(tmp_path) -> None:
    rgb = np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _png(Image.fromarray(rgb))
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(BadInputError):
        load_photo(path, "png")
