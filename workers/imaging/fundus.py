"""Colour fundus photograph preprocessing, shared by training, evaluation and the serving pipeline.

There is exactly one implementation so that a model sees the same pixels in production as it saw in
training. Every number (target size, mean, std) comes from the model's `Preprocessing` manifest entry.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from PIL import Image

from app.schemas.manifest import Preprocessing
from workers.imaging.resize import resize_bicubic

# The camera border of a fundus photograph is near black but not zero (sensor noise, JPEG ringing).
# A pixel belongs to the retina when its smoothed brightness clears both an absolute floor and a
# fraction of the image's bright level, so dim and bright exposures both separate cleanly.
_ABSOLUTE_FLOOR = 12.0
_RELATIVE_FLOOR = 0.12
# The mask is found on a small copy; the disc is large, so ~128 px keeps its outline to within 1 %.
_MASK_LONG_SIDE = 128
# Rows or columns with fewer retina pixels than this fraction of the largest count are treated as
# stray bright noise (text overlays, hot pixels), not as part of the disc.
_MIN_LINE_FRACTION = 0.05


class FundusPhoto:
    """One photograph and what is found on it once, for the quality gate and the preprocessing alike: its PIL
    image (one copy of the pixels, not one per step) and the retina disc (mask, block means, square).

    The gate and the crop each used to find the disc on their own: the same reduction, percentile and
    bounding box three times a job, and three PIL copies of the photo.
    """

    def __init__(self, rgb: np.ndarray) -> None:
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[..., None], 3, axis=-1)
        if rgb.ndim != 3 or rgb.shape[-1] != 3:
            raise ValueError(f"expected an HxWx3 or HxW image, got shape {rgb.shape}")
        if rgb.dtype != np.uint8:
            raise ValueError(f"expected uint8 pixels, got dtype {rgb.dtype}")
        self.rgb = rgb
        self.image = Image.fromarray(rgb)

    @functools.cached_property
    def disc(self) -> RetinaDisc | None:
        return _find_disc(self.image)

    @property
    def mask(self) -> np.ndarray | None:
        return None if self.disc is None else self.disc.mask

    @property
    def square(self) -> tuple[int, int, int, int] | None:
        return None if self.disc is None else self.disc.square


@dataclasses.dataclass(frozen=True)
class RetinaDisc:
    mask: np.ndarray  # boolean, on the block-mean copy about 128 px on its long side
    block_means: np.ndarray  # float32 (rows, columns, channels): the copy the mask was found on
    factor: int  # the block side, in photo pixels
    square: tuple[int, int, int, int] | None  # the crop box around the disc (see _retina_square)


def as_fundus_photo(photo: np.ndarray | FundusPhoto) -> FundusPhoto:
    return photo if isinstance(photo, FundusPhoto) else FundusPhoto(photo)


def crop_to_retina(rgb: np.ndarray) -> np.ndarray:
    """Crop to the circular retina disc and pad to a square with the disc centred (black padding).

    Returns the input unchanged when no retina is visible (an all-dark image).
    """
    image = Image.fromarray(rgb)
    box = _retina_square(image)
    return rgb if box is None else np.asarray(image.crop(box))


def retina_square(image: Image.Image) -> tuple[int, int, int, int] | None:
    """The crop box the model's preprocessing uses: the square around the retina disc (None: no retina)."""
    return _retina_square(image)


def retina_mask(image: Image.Image) -> np.ndarray | None:
    """Boolean retina mask on a copy about 128 px on its long side (None: no retina visible)."""
    return _retina_mask(image)


def _retina_square(image: Image.Image) -> tuple[int, int, int, int] | None:
    disc = _find_disc(image)
    return None if disc is None else disc.square


def _square_around(mask: np.ndarray, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The square (left, top, right, bottom) centred on the retina disc, reaching outside the photo where the
    disc is cut (PIL's crop pads that part black); None when no retina is visible."""
    mask_h, mask_w = mask.shape
    rows = mask.sum(axis=1)
    cols = mask.sum(axis=0)
    row_idx = np.flatnonzero(rows >= _MIN_LINE_FRACTION * rows.max())
    col_idx = np.flatnonzero(cols >= _MIN_LINE_FRACTION * cols.max())
    scale_y, scale_x = height / mask_h, width / mask_w
    top, bottom = row_idx[0] * scale_y, (row_idx[-1] + 1) * scale_y
    left, right = col_idx[0] * scale_x, (col_idx[-1] + 1) * scale_x

    diameter = max(bottom - top, right - left)
    centre_x = (left + right) / 2
    centre_y = (top + bottom) / 2
    if bottom - top < 0.97 * diameter:
        # The disc is cut at the top and/or bottom, so the bounding box centre is not the disc centre.
        # The disc is widest at its centre row; take the middle of the rows that are (nearly) widest.
        widest = np.flatnonzero(rows >= 0.98 * rows.max())
        centre_y = (widest.mean() + 0.5) * scale_y

    side = int(round(diameter))
    y0 = int(round(centre_y - side / 2))
    x0 = int(round(centre_x - side / 2))
    if min(y0 + side, height) <= max(y0, 0) or min(x0 + side, width) <= max(x0, 0):
        return None
    return x0, y0, x0 + side, y0 + side


def _retina_mask(image: Image.Image) -> np.ndarray | None:
    """Boolean mask of retina pixels on a downscaled copy, or None when the image is all dark."""
    disc = _find_disc(image)
    return None if disc is None else disc.mask


def _find_disc(image: Image.Image) -> RetinaDisc | None:
    """The retina disc on a downscaled copy, or None when the image is all dark."""
    width, height = image.size
    factor = max(1, int(np.ceil(max(height, width) / _MASK_LONG_SIDE)))
    # Block means both shrink and smooth, so isolated bright noise pixels do not enter the mask.
    small_h, small_w = height // factor, width // factor
    if small_h == 0 or small_w == 0:
        return None
    # PIL's box reduction gives the block means in C, without a float copy of the full-size photo.
    small = image.reduce(factor, box=(0, 0, small_w * factor, small_h * factor))
    block = np.asarray(small, dtype=np.float32)
    # Red carries the retina's brightness in fundus photos; the channel mean rescues green-dominant
    # or grey captures where red is weak.
    brightness = np.maximum(block[..., 0], block.mean(axis=-1))
    bright_level = float(np.percentile(brightness, 99))
    threshold = max(_ABSOLUTE_FLOOR, _RELATIVE_FLOOR * bright_level)
    if bright_level <= threshold:
        return None
    mask = brightness > threshold
    if not mask.any():
        return None
    return RetinaDisc(mask, block, factor, _square_around(mask, width, height))


def preprocess_fundus(rgb: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """Turn a fundus photograph (HxWx3 or HxW uint8) into the model's float32 CHW input tensor."""
    return to_model_tensor(fit_to_model(rgb, preprocessing), preprocessing)


def fit_to_model(photo: np.ndarray | FundusPhoto, preprocessing: Preprocessing) -> np.ndarray:
    """The photograph as the model sees it, still uint8 RGB: cropped (if the manifest says so) and resized."""
    photo = as_fundus_photo(photo)
    # One PIL image throughout: the crop (with its black padding) and the resize need no numpy copies between.
    image = photo.image
    if preprocessing.crop == "retina-disc" and (box := photo.square) is not None:
        image = image.crop(box)
    if preprocessing.target_size is not None:
        # PIL's bicubic filter widens its support when shrinking (it antialiases), so small lesions such as
        # microaneurysms survive as faint dots instead of aliasing away.
        return resize_bicubic(image, preprocessing.target_size)
    return np.asarray(image)


def to_model_tensor(rgb: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """uint8 HxWx3 (from `fit_to_model`) → float32 CHW with the manifest's channel order and normalization."""
    if preprocessing.color_order == "GRAY":
        # ITU-R BT.601 luma, the weights PIL's "L" conversion uses.
        luma = (rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
        return _normalised(luma, preprocessing).transpose(2, 0, 1).copy()
    # A uint8 pixel has 256 values: each channel's normalised values are looked up, not computed per pixel
    # (the same float32 operations, done once per value), straight into the CHW layout.
    table = _value_table(preprocessing)
    order = (2, 1, 0) if preprocessing.color_order == "BGR" else (0, 1, 2)
    tensor = np.empty((3, *rgb.shape[:2]), np.float32)
    for channel, source in enumerate(order):
        np.take(table[channel], rgb[..., source], out=tensor[channel])
    return tensor


def _value_table(preprocessing: Preprocessing) -> np.ndarray:
    """(3, 256) float32: the model input for each 8-bit value of each channel, in the model's channel order."""
    norm = preprocessing.normalization
    key = None if norm is None else (norm.scale, tuple(norm.mean), tuple(norm.std))
    return _cached_value_table(key)


@functools.lru_cache(maxsize=16)
def _cached_value_table(key: tuple[float, tuple[float, ...], tuple[float, ...]] | None) -> np.ndarray:
    values = np.broadcast_to(np.arange(256, dtype=np.float32)[:, None], (256, 3))
    if key is not None:
        scale, mean, std = key
        values = _apply_normalisation(values, scale, mean, std)
    table = np.ascontiguousarray(values.T, dtype=np.float32)
    table.flags.writeable = False
    return table


def _normalised(pixels: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    norm = preprocessing.normalization
    return pixels if norm is None else _apply_normalisation(pixels, norm.scale, norm.mean, norm.std)


def _apply_normalisation(pixels: np.ndarray, scale: float, mean, std) -> np.ndarray:
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    if mean.shape[0] != pixels.shape[-1] or std.shape[0] != pixels.shape[-1]:
        raise ValueError(f"normalization has {mean.shape[0]} means and {std.shape[0]} stds "
                         f"for {pixels.shape[-1]} channels")
    return (pixels * np.float32(scale) - mean) / std
