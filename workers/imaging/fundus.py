"""Colour fundus photograph preprocessing, shared by training, evaluation and the serving pipeline.

There is exactly one implementation so that a model sees the same pixels in production as it saw in
training. Every number (target size, mean, std) comes from the model's `Preprocessing` manifest entry.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from app.schemas.manifest import Preprocessing

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


def crop_to_retina(rgb: np.ndarray) -> np.ndarray:
    """Crop to the circular retina disc and pad to a square with the disc centred (black padding).

    Returns the input unchanged when no retina is visible (an all-dark image).
    """
    height, width = rgb.shape[:2]
    mask = _retina_mask(rgb)
    if mask is None:
        return rgb
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
    square = np.zeros((side, side, 3), dtype=rgb.dtype)
    src_y0, src_y1 = max(y0, 0), min(y0 + side, height)
    src_x0, src_x1 = max(x0, 0), min(x0 + side, width)
    if src_y1 <= src_y0 or src_x1 <= src_x0:
        return rgb
    square[src_y0 - y0 : src_y1 - y0, src_x0 - x0 : src_x1 - x0] = rgb[src_y0:src_y1, src_x0:src_x1]
    return square


def _retina_mask(rgb: np.ndarray) -> np.ndarray | None:
    """Boolean mask of retina pixels on a downscaled copy, or None when the image is all dark."""
    height, width = rgb.shape[:2]
    factor = max(1, int(np.ceil(max(height, width) / _MASK_LONG_SIDE)))
    # Block means both shrink and smooth, so isolated bright noise pixels do not enter the mask.
    small_h, small_w = height // factor, width // factor
    if small_h == 0 or small_w == 0:
        return None
    # PIL's box reduction gives the block means in C, without a float copy of the full-size photo.
    small = Image.fromarray(rgb).reduce(factor, box=(0, 0, small_w * factor, small_h * factor))
    block = np.asarray(small, dtype=np.float32)
    # Red carries the retina's brightness in fundus photos; the channel mean rescues green-dominant
    # or grey captures where red is weak.
    brightness = np.maximum(block[..., 0], block.mean(axis=-1))
    bright_level = float(np.percentile(brightness, 99))
    threshold = max(_ABSOLUTE_FLOOR, _RELATIVE_FLOOR * bright_level)
    if bright_level <= threshold:
        return None
    mask = brightness > threshold
    return mask if mask.any() else None


def preprocess_fundus(rgb: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """Turn a fundus photograph (HxWx3 or HxW uint8) into the model's float32 CHW input tensor."""
    return to_model_tensor(fit_to_model(rgb, preprocessing), preprocessing)


def fit_to_model(rgb: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """The photograph as the model sees it, still uint8 RGB: cropped (if the manifest says so) and resized."""
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=-1)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an HxWx3 or HxW image, got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got dtype {rgb.dtype}")
    if preprocessing.crop == "retina-disc":
        rgb = crop_to_retina(rgb)
    if preprocessing.target_size is not None:
        rgb = _resize(rgb, preprocessing.target_size)
    return rgb


def to_model_tensor(rgb: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """uint8 HxWx3 (from `fit_to_model`) → float32 CHW with the manifest's channel order and normalization."""
    pixels = rgb.astype(np.float32)
    if preprocessing.color_order == "BGR":
        pixels = pixels[..., ::-1]
    elif preprocessing.color_order == "GRAY":
        # ITU-R BT.601 luma, the weights PIL's "L" conversion uses.
        pixels = (pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]

    if preprocessing.normalization is not None:
        norm = preprocessing.normalization
        mean = np.asarray(norm.mean, dtype=np.float32)
        std = np.asarray(norm.std, dtype=np.float32)
        if mean.shape[0] != pixels.shape[-1] or std.shape[0] != pixels.shape[-1]:
            raise ValueError(
                f"normalization has {mean.shape[0]} means and {std.shape[0]} stds "
                f"for {pixels.shape[-1]} channels ({preprocessing.color_order})"
            )
        pixels = (pixels * np.float32(norm.scale) - mean) / std
    return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)


def _resize(rgb: np.ndarray, target_size: tuple[int, int]) -> np.ndarray:
    target_h, target_w = target_size
    if rgb.shape[:2] == (target_h, target_w):
        return rgb
    # PIL's bicubic filter widens its support when shrinking (it antialiases), so small lesions such as
    # microaneurysms survive as faint dots instead of aliasing away.
    image = Image.fromarray(rgb)
    return np.asarray(image.resize((target_w, target_h), resample=Image.Resampling.BICUBIC))
