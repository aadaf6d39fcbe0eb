"""Occlusion sensitivity for 2-D classifiers: how much the reported probability drops when a patch of the input
is replaced by the training mean (0 after normalisation). It needs no gradients, so any ONNX model works, and
the occluded copies go through the model's own batched inference path.

Pure functions: the heat map on the model's input grid, its mapping back to the source image's grid, and the
overlay picture.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

from app.schemas.manifest import SaliencySettings

OVERLAY_NAME = "saliency.png"
DICOM_NAME = "saliency.dcm"
HEAT_RGB = np.array([255.0, 235.0, 0.0], np.float32)  # yellow: visible on a red fundus and on grey ultrasound
MAX_ALPHA = 0.7


def log_odds(score: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """The score as log-odds: a confident probability (0.999) barely moves when one patch is hidden, its
    log-odds do, so the map keeps its shape when the model is sure."""

    def wrapped(batch: np.ndarray) -> np.ndarray:
        p = np.clip(np.asarray(score(batch), np.float64), 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p))

    return wrapped


def _starts(length: int, patch: int, stride: int) -> list[int]:
    last = max(length - patch, 0)
    starts = list(range(0, last + 1, stride))
    return starts if starts[-1] == last else [*starts, last]


def occlusion_map(tensor: np.ndarray, score: Callable[[np.ndarray], np.ndarray], settings: SaliencySettings,
                  channels: tuple[int, ...] | None = None) -> tuple[np.ndarray, int]:
    """(rows, columns) float32: the mean drop of `score` over the patches covering each pixel (negative where
    hiding the pixel raises it), and the number of model runs it took. `tensor` is one (C, H, W) input;
    `score` maps a (B, C, H, W) batch to (B,) probabilities; `channels` are the ones occluded (None: all; an
    input's mask channel, say, stays)."""
    occluded = slice(None) if channels is None else list(channels)
    _, rows, cols = tensor.shape
    patch = min(settings.patch_px, rows, cols)
    stride = settings.stride_px
    corners = [(y, x) for y in _starts(rows, patch, stride) for x in _starts(cols, patch, stride)]
    base = float(score(tensor[np.newaxis])[0])
    total = np.zeros((rows, cols), np.float64)
    cover = np.zeros((rows, cols), np.float64)
    runs = 1
    for first in range(0, len(corners), settings.batch_size):
        chunk = corners[first:first + settings.batch_size]
        batch = np.repeat(tensor[np.newaxis], len(chunk), axis=0)
        for k, (y, x) in enumerate(chunk):
            batch[k, occluded, y:y + patch, x:x + patch] = 0.0
        drops = base - np.asarray(score(batch), np.float64)
        runs += 1
        for (y, x), drop in zip(chunk, drops, strict=True):
            total[y:y + patch, x:x + patch] += drop
            cover[y:y + patch, x:x + patch] += 1
    # Patch averages are blocky; smoothing at half the stride keeps the peaks where they are.
    heat = ndimage.gaussian_filter(total / np.maximum(cover, 1), sigma=settings.stride_px / 2)
    return heat.astype(np.float32), runs


def to_source_grid(heat: np.ndarray, box: tuple[int, int, int, int], source_shape: tuple[int, int]) -> np.ndarray:
    """The model-grid map placed back on the source image: `box` (x0, y0, x1, y1, may reach outside the image)
    is the region of the source the model's input was resized from. Zero outside it."""
    x0, y0, x1, y1 = box
    resized = np.asarray(Image.fromarray(heat).resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR))
    out = np.zeros(source_shape, np.float32)
    rows, cols = source_shape
    sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(y1, rows), min(x1, cols)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0:sy1, sx0:sx1] = resized[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0]
    return out


def overlay_rgb(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """uint8 RGB: the image with the positive part of the heat map in red-orange, opaque where it peaks."""
    rgb = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]
    peak = float(heat.max())
    alpha = (np.clip(heat, 0.0, None) / peak if peak > 0 else np.zeros_like(heat))[..., None] * MAX_ALPHA
    return np.clip(rgb * (1 - alpha) + HEAT_RGB * alpha, 0, 255).astype(np.uint8)


def overlay_png(image: np.ndarray, heat: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(overlay_rgb(image, heat)).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()
