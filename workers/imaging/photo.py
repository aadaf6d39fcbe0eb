"""Decode a photograph (PNG, JPEG, or a single-frame DICOM image) to display pixels, uint8 RGB or grey.

DICOM colour is brought to RGB whatever its photometric interpretation (YBR_FULL, YBR_FULL_422, YBR_RCT,
PALETTE COLOR); MONOCHROME1 is inverted so that white is bright, as a viewer would show it.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
from PIL import Image, ImageOps
from pydicom.pixels import apply_color_lut, apply_voi_lut

from app.errors import BadInputError


def load_photo(path: Path, input_format: str, frame: int = 0, min_side: int | None = None) -> np.ndarray:
    """`min_side`: the caller needs no more pixels than this on the shorter side, so a JPEG may be decoded at
    1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) as long as it keeps that many. A 12-megapixel camera photo
    for a 224-px model then costs the decode of a 0.75-megapixel one; other formats decode in full."""
    try:
        if input_format == "dicom":
            return _load_dicom_photo(path, frame)
        return decode_photo(path.read_bytes(), min_side)
    except BadInputError:
        raise
    except Exception as exc:  # decoders raise many types on corrupt data; the job must fail cleanly
        raise BadInputError(f"The {input_format} image could not be decoded ({type(exc).__name__})") from exc


def decode_photo(data: bytes, min_side: int | None = None) -> np.ndarray:
    """A PNG or JPEG held in memory, decoded as `load_photo` decodes a file (same decoders, same pixels): for
    callers that receive bytes, such as the benchmark's peers, which must decode as the service does.
    Raises the decoder's own exception on corrupt data; `load_photo` turns that into a BadInputError."""
    with Image.open(io.BytesIO(data)) as image:
        if _plain_png(image, data):
            # libspng inflates about 1.6x faster than Pillow on this project's machine, with identical pixels,
            # and imagecodecs lets go of the GIL while it does (pyspng held it: decodes ran one at a time).
            return imagecodecs.spng_decode(data)
        if min_side is not None and image.format == "JPEG":
            image.draft(None, (min_side, min_side))  # both sides stay >= min_side
        # Phone and camera JPEGs store rotation in EXIF. In place: otherwise an upright photo is copied whole.
        ImageOps.exif_transpose(image, in_place=True)
        if image.mode in {"I", "I;16", "F"}:
            return _to_uint8(np.asarray(image, dtype=np.float32))
        if image.mode not in {"L", "RGB"}:
            image = image.convert("RGB")
        return np.asarray(image).copy()


def _plain_png(image: Image.Image, data: bytes) -> bool:
    """An 8-bit grey or RGB PNG with no EXIF: Pillow's header says so (its raw mode is the mode itself, not
    a 1/2/4/16-bit or palette one), and no eXIf chunk can hold a rotation, since its type never occurs in
    the bytes (an eXIf chunk may follow the pixel data, where Pillow's header reading does not look)."""
    return (image.format == "PNG" and image.mode in {"L", "RGB"} and len(image.tile) == 1
            and image.tile[0][3] == image.mode and b"eXIf" not in data)


def _load_dicom_photo(path: Path, frame: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(path, force=True)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        if not 0 <= frame < frames:
            raise BadInputError(f"frame {frame} requested but the image has {frames} frame(s)")
        # as_rgb converts any YBR colour space to RGB; index picks one frame without decoding the rest.
        pixels = dataset.pixel_array if frames == 1 else pydicom.pixels.pixel_array(dataset, index=frame)
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, dataset)
    elif photometric.startswith("MONOCHROME") and "WindowCenter" in dataset:
        pixels = apply_voi_lut(pixels, dataset)
    image = _to_uint8(pixels)
    if photometric == "MONOCHROME1":
        image = 255 - image
    return image


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return np.ascontiguousarray(pixels)
    pixels = pixels.astype(np.float32)
    low, high = float(pixels.min()), float(pixels.max())
    if high <= low:
        return np.zeros(pixels.shape, dtype=np.uint8)
    return np.round((pixels - low) * (255.0 / (high - low))).astype(np.uint8)
