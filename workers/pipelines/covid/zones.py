"""Lung-zone statistics: lesion share in the upper, middle and lower thirds of each lung's height."""

from __future__ import annotations

import numpy as np

from app.schemas.results import ZoneInvolvement


def percent(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0


def _slice_z(affine: np.ndarray, index: int, shape: tuple[int, int]) -> np.ndarray:
    """Patient z (mm, LPS +z superior) of every pixel centre of slice `index`."""
    r = np.arange(shape[0], dtype=np.float64)[:, None]
    c = np.arange(shape[1], dtype=np.float64)[None, :]
    return affine[2, 3] + affine[2, 2] * index + affine[2, 1] * r + affine[2, 0] * c


def zone_involvement(lung_labels: np.ndarray, side: int, labels: np.ndarray, affine: np.ndarray) -> ZoneInvolvement:
    """Lesion percentage of one lung in thirds of its height along patient z (LPS +z: superior).

    The lung is `side` in `lung_labels`, lesions are `labels` above 0. Slice by slice, so memory stays at one
    slice of masks and coordinates whatever the series' size."""
    occupied = [i for i in range(lung_labels.shape[0]) if (lung_labels[i] == side).any()]
    if not occupied:
        return ZoneInvolvement(upper=0.0, middle=0.0, lower=0.0)
    low, high = np.inf, -np.inf
    for index in occupied:
        z = _slice_z(affine, index, lung_labels.shape[1:])[lung_labels[index] == side]
        low, high = min(low, float(z.min())), max(high, float(z.max()))
    cuts = [low + (high - low) / 3, low + 2 * (high - low) / 3]
    lung_counts, lesion_counts = np.zeros(3, np.int64), np.zeros(3, np.int64)
    for index in occupied:
        lung = lung_labels[index] == side
        zone = np.digitize(_slice_z(affine, index, lung_labels.shape[1:]), cuts)  # 0 lower, 1 middle, 2 upper
        lung_counts += np.bincount(zone[lung], minlength=3)
        lesion_counts += np.bincount(zone[lung & (labels[index] > 0)], minlength=3)
    lower, middle, upper = (percent(int(a), int(b)) for a, b in zip(lesion_counts, lung_counts, strict=True))
    return ZoneInvolvement(upper=upper, middle=middle, lower=lower)

