"""A classical lung mask for a CT volume, the left and right lungs apart.

air (HU below `AIR_HU`) → drop the air outside the body (connected to the in-plane border of any slice)
→ fill holes slice by slice (vessels, airway walls, lesions enclosed by lung) → keep the largest
components → left / right by the patient x coordinate (DICOM LPS: +x is the patient's left), taken
from the affine, never from array order (a feet-first or prone series flips the columns).

Volumes are (slice, row, column) arrays as `workers.imaging.ct_series` builds them; the affine maps
(column, row, slice, 1) to LPS millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AIR_HU = -320.0
MIN_LUNG_ML = 20.0  # a component smaller than this is not a lung (bowel gas, trachea stub)


@dataclass(frozen=True)
class LungMask:
    """Labels per voxel: 0 outside the lungs, 1 right lung, 2 left lung (the patient's sides)."""

    labels: np.ndarray  # uint8 (slice, row, column)

    RIGHT = 1
    LEFT = 2

    @property
    def right(self) -> np.ndarray:
        return self.labels == self.RIGHT

    @property
    def left(self) -> np.ndarray:
        return self.labels == self.LEFT

    @property
    def both(self) -> np.ndarray:
        return self.labels > 0


def body_air(hu: np.ndarray, air_hu: float = AIR_HU) -> np.ndarray:
    """Air inside the body: below `air_hu` and not connected (in 3D) to the in-plane border of any slice."""
    from scipy import ndimage

    air = hu < air_hu
    labels, _ = ndimage.label(air)
    border = np.zeros(air.shape, bool)
    border[:, 0, :] = border[:, -1, :] = border[:, :, 0] = border[:, :, -1] = True
    outside = np.unique(labels[border & air])
    inside = air.copy()
    inside[np.isin(labels, outside[outside > 0])] = False
    return inside


def fill_holes_by_slice(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    filled = np.empty_like(mask)
    for index in range(mask.shape[0]):
        filled[index] = ndimage.binary_fill_holes(mask[index])
    return filled


def patient_x(affine: np.ndarray, slices: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """LPS x (mm) of voxels given as index arrays."""
    return affine[0, 3] + affine[0, 0] * columns + affine[0, 1] * rows + affine[0, 2] * slices


def segment_lungs(hu: np.ndarray, affine: np.ndarray, spacing_mm: tuple[float, float, float],
                  air_hu: float = AIR_HU) -> LungMask:
    """The lungs of a chest CT volume, right (1) and left (2).

    The two largest components of body air are the lungs when both are large; when they touch (through
    the airways or a thin anterior junction) the single component is split at the patient-x midline between
    its two halves' centres.
    """
    from scipy import ndimage

    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    candidate = fill_holes_by_slice(body_air(hu, air_hu))
    candidate = ndimage.binary_opening(candidate, structure=ndimage.generate_binary_structure(3, 1))
    labels, count = ndimage.label(candidate)
    out = np.zeros(hu.shape, np.uint8)
    if count == 0:
        return LungMask(out)
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1]
    big = [int(i) + 1 for i in order[:2] if sizes[i] * voxel_ml >= MIN_LUNG_ML]
    if not big:
        return LungMask(out)
    if len(big) == 2 and sizes[big[1] - 1] >= 0.25 * sizes[big[0] - 1]:
        for component in big:
            s, r, c = np.nonzero(labels == component)
            side = LungMask.LEFT if patient_x(affine, s, r, c).mean() > _midline_x(hu, affine, air_hu) \
                else LungMask.RIGHT
            out[s, r, c] = side
        if len(set(np.unique(out)) - {0}) == 2:
            return LungMask(out)
        out[:] = 0
        big = big[:1] if sizes[big[0] - 1] >= 2 * sizes[big[1] - 1] else big
    # One component holds both lungs (or the two found are on one side): split by patient x.
    mask = np.isin(labels, big)
    s, r, c = np.nonzero(mask)
    x = patient_x(affine, s, r, c)
    midline = _midline_x(hu, affine, air_hu)
    out[s, r, c] = np.where(x > midline, LungMask.LEFT, LungMask.RIGHT)
    return LungMask(out)


def _midline_x(hu: np.ndarray, affine: np.ndarray, air_hu: float) -> float:
    """Patient x of the body's centre: the mean x of non-air voxels on the central slice."""
    centre = hu.shape[0] // 2
    r, c = np.nonzero(hu[centre] >= air_hu)
    if r.size == 0:
        return 0.0
    return float(patient_x(affine, np.full(r.shape, centre), r, c).mean())


def lung_extent_z(mask: np.ndarray, affine: np.ndarray) -> tuple[float, float]:
    """Lowest and highest patient z (LPS: +z towards the head) of the mask's voxel centres."""
    s, r, c = np.nonzero(mask)
    if s.size == 0:
        return (0.0, 0.0)
    z = affine[2, 3] + affine[2, 0] * c + affine[2, 1] * r + affine[2, 2] * s
    return float(z.min()), float(z.max())
