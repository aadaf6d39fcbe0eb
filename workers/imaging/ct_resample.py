"""Resample a CT volume to a model's voxel spacing along its own axes, and map indices back.

The volume keeps its axes (slice, row, column): only the spacing changes, so no orientation is imposed
on the model (it is trained with flips). In-plane, slices are smoothed against aliasing and sampled
linearly, a chunk of slices at a time so memory stays near the input plus the (smaller) output. Along
the slice axis samples are placed at the slices' true positions, so missing slices are interpolated
across rather than shifting everything after them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.imaging.ct_geometry import VolumeGeometry

CHUNK_SLICES = 16
# Gaussian sigma (in input voxels) per unit of downsampling factor, against aliasing.
ANTIALIAS = 0.35


@dataclass(frozen=True)
class ResampledVolume:
    volume: np.ndarray  # float32 [slice, row, column] at `spacing_mm`
    spacing_mm: tuple[float, float, float]  # (slice, row, column) = the manifest's target_spacing_mm order
    column_step: float  # input columns per output column
    row_step: float
    slice_positions_mm: np.ndarray  # distance along the normal of each output slice from input slice 0

    def to_input_voxel(self, slice_index: float, row: float, column: float,
                       geometry: VolumeGeometry) -> tuple[float, float, float]:
        """(column, row, slice) fractional index in the input series of an output voxel."""
        position = float(np.interp(slice_index, np.arange(len(self.slice_positions_mm)), self.slice_positions_mm))
        return column * self.column_step, row * self.row_step, geometry.slice_index_at(position)


def resample_to_spacing(hu: np.ndarray, in_spacing_xyz: tuple[float, float, float], slice_positions_mm: np.ndarray,
                        target_spacing_zyx: tuple[float, float, float]) -> ResampledVolume:
    """hu [slice, row, column] with (column, row, slice) spacing and true slice positions (from slice 0)."""
    from scipy.ndimage import gaussian_filter1d

    target_z, target_y, target_x = (float(v) for v in target_spacing_zyx)
    col_step, row_step = target_x / in_spacing_xyz[0], target_y / in_spacing_xyz[1]
    n_slices, n_rows, n_cols = hu.shape
    out_rows = int(np.floor((n_rows - 1) / row_step)) + 1
    out_cols = int(np.floor((n_cols - 1) / col_step)) + 1
    row_index = _linear_index(out_rows, row_step, n_rows)
    col_index = _linear_index(out_cols, col_step, n_cols)

    in_plane = np.empty((n_slices, out_rows, out_cols), np.float32)
    for start in range(0, n_slices, CHUNK_SLICES):
        chunk = hu[start : start + CHUNK_SLICES]
        if row_step > 1:
            chunk = gaussian_filter1d(chunk, ANTIALIAS * row_step, axis=1, mode="nearest")
        chunk = _take_linear(chunk, row_index, axis=1)
        if col_step > 1:
            chunk = gaussian_filter1d(chunk, ANTIALIAS * col_step, axis=2, mode="nearest")
        in_plane[start : start + CHUNK_SLICES] = _take_linear(chunk, col_index, axis=2)

    positions = np.asarray(slice_positions_mm, dtype=np.float64)
    extent = float(positions[-1] - positions[0])
    out_slices = int(np.floor(extent / target_z + 1e-6)) + 1
    out_positions = positions[0] + np.arange(out_slices) * target_z
    nominal = extent / max(n_slices - 1, 1)
    if target_z / nominal > 1:
        in_plane = gaussian_filter1d(in_plane, ANTIALIAS * target_z / nominal, axis=0, mode="nearest")
    fractional = np.interp(out_positions, positions, np.arange(n_slices, dtype=np.float64))
    slice_index = (np.clip(np.floor(fractional).astype(int), 0, max(n_slices - 2, 0)),
                   fractional - np.clip(np.floor(fractional), 0, max(n_slices - 2, 0)))
    volume = _take_linear(in_plane, slice_index, axis=0)
    return ResampledVolume(
        volume=np.ascontiguousarray(volume, dtype=np.float32),
        spacing_mm=(target_z, target_y, target_x),
        column_step=col_step,
        row_step=row_step,
        slice_positions_mm=out_positions - positions[0],
    )


def _linear_index(n_out: int, step: float, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    coordinate = np.arange(n_out, dtype=np.float64) * step
    low = np.clip(np.floor(coordinate).astype(int), 0, max(n_in - 2, 0))
    return low, coordinate - low


def _take_linear(array: np.ndarray, index: tuple[np.ndarray, np.ndarray], axis: int) -> np.ndarray:
    low, weight = index
    if array.shape[axis] == 1:
        return np.take(array, np.zeros_like(low), axis=axis)
    shape = [1] * array.ndim
    shape[axis] = len(weight)
    weight = weight.reshape(shape).astype(np.float32)
    a = np.take(array, low, axis=axis)
    b = np.take(array, low + 1, axis=axis)
    a *= 1 - weight
    b *= weight
    a += b
    return a


def window(volume: np.ndarray, window_hu: tuple[float, float]) -> np.ndarray:
    """Clip to the manifest's HU window and scale to [0, 1], in place."""
    low, high = window_hu
    np.clip(volume, low, high, out=volume)
    volume -= low
    volume *= 1.0 / (high - low)
    return volume
