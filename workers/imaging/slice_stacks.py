"""Slice stacks for slice-wise (2D and 2.5D) CT models: each slice windowed, resized to the model's plane, and
stacked with its neighbours (or planes at fixed distances along the slice normal) as channels.

One implementation for serving (workers/pipelines/covid/inference.py) and training
(models/covid-lesion-segmentation-reference/train.py), so both feed the model the same tensors.
"""

from __future__ import annotations

import numpy as np

from app.errors import ModelError
from app.schemas.manifest import ModelManifest


def resize_plane(array: np.ndarray, size: tuple[int, int], order: int = 1) -> np.ndarray:
    """Resize the last two axes to `size` (pixel areas aligned, as an image resize)."""
    from scipy import ndimage

    if tuple(array.shape[-2:]) == tuple(size):
        return array
    factors = (1.0,) * (array.ndim - 2) + (size[0] / array.shape[-2], size[1] / array.shape[-1])
    out = ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=True, prefilter=False)
    if out.shape[-2:] != tuple(size):  # rounding in zoom: pad or crop by at most one pixel
        fixed = np.zeros(array.shape[:-2] + tuple(size), out.dtype)
        h, w = min(size[0], out.shape[-2]), min(size[1], out.shape[-1])
        fixed[..., :h, :w] = out[..., :h, :w]
        out = fixed
    return out


def model_plane(shape: tuple[int, int], spacing_mm: tuple[float, float, float],
                manifest: ModelManifest) -> tuple[int, int]:
    """The rows and columns each slice is resized to for the model.

    With `target_spacing_mm`, the slice keeps its field of view at the model's pixel spacing (its y and x; a
    slice-wise model reads the series' own slices, so z is not resampled); otherwise `target_size`.
    `spacing_mm` is the series' (column, row, slice) spacing.
    """
    spec = manifest.preprocessing
    if spec.target_spacing_mm is not None:
        _, row_mm, column_mm = spec.target_spacing_mm
        return (max(1, round(shape[0] * spacing_mm[1] / row_mm)), max(1, round(shape[1] * spacing_mm[0] / column_mm)))
    if spec.target_size is None:
        raise ModelError(f"{manifest.id}: the manifest needs preprocessing.target_size or target_spacing_mm")
    return tuple(spec.target_size)


def model_slices(hu: np.ndarray, manifest: ModelManifest, plane: tuple[int, int]) -> np.ndarray:
    """Every slice windowed to [0, 1] and resized in-plane to `plane`: float32 (slices, *plane)."""
    spec = manifest.preprocessing
    if spec.window_hu is None:
        raise ModelError(f"{manifest.id}: the manifest needs preprocessing.window_hu")
    low, high = spec.window_hu
    out = np.empty((hu.shape[0], *plane), np.float32)
    for index in range(hu.shape[0]):
        windowed = np.clip((hu[index] - low) / (high - low), 0.0, 1.0)
        out[index] = resize_plane(windowed, plane)
    return out


def stack_neighbours(slices: np.ndarray, indices: np.ndarray, channels: int, positions_mm: np.ndarray | None = None,
                     offsets_mm: list[float] | None = None) -> np.ndarray:
    """(len(indices), channels, H, W): each slice with its neighbours along the series.

    Without `offsets_mm`, the adjacent slices (the end slices repeated). With them, the planes that far along
    the slice normal, each interpolated linearly between the two slices around it from the slices' true
    positions (`positions_mm`, increasing), so that a channel means the same distance whatever the spacing.
    """
    if offsets_mm is None:
        half = channels // 2
        offsets = np.arange(-half, half + 1)
        picks = np.clip(indices[:, None] + offsets[None, :], 0, slices.shape[0] - 1)
        return slices[picks]
    wanted = positions_mm[indices][:, None] + np.asarray(offsets_mm, np.float64)[None, :]
    fractional = np.interp(wanted, positions_mm, np.arange(len(positions_mm)))  # clamped to the end slices
    below = np.floor(fractional).astype(np.intp)
    above = np.minimum(below + 1, slices.shape[0] - 1)
    weight = (fractional - below)[..., None, None].astype(np.float32)
    return slices[below] * (1 - weight) + slices[above] * weight
