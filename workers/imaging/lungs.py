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
    air = hu < air_hu
    components, count = label_compact(air)
    outside = np.zeros(count + 1, bool)
    outside[_border_labels(components)] = True
    outside[0] = False
    for index in range(air.shape[0]):  # slice by slice: a lookup over the whole volume would index with int64
        air[index] &= ~outside[components[index]]
    return air


def _border_labels(components: np.ndarray) -> np.ndarray:
    edges = (components[:, 0, :], components[:, -1, :], components[:, :, 0], components[:, :, -1])
    return np.unique(np.concatenate([edge.ravel() for edge in edges]))


def fill_holes_by_slice(mask: np.ndarray) -> np.ndarray:
    """Holes filled slice by slice, in place: the mask given is the one returned."""
    from scipy import ndimage

    for index in range(mask.shape[0]):
        mask[index] = ndimage.binary_fill_holes(mask[index])
    return mask


def label_compact(mask: np.ndarray, structure: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """`ndimage.label` into uint16 while the components fit (nearly always): half the memory of its int32."""
    from scipy import ndimage

    try:
        components = np.empty(mask.shape, np.uint16)
        return components, ndimage.label(mask, structure, output=components)
    except RuntimeError:  # more than 65535 components: scipy refuses to truncate
        del components
        return ndimage.label(mask, structure)


def component_sizes(components: np.ndarray, count: int) -> np.ndarray:
    """Voxels per label 0..count. Slice by slice: `np.bincount` of the whole volume would copy it to int64."""
    sizes = np.zeros(count + 1, np.int64)
    for plane in components:
        sizes += np.bincount(plane.ravel(), minlength=count + 1)
    return sizes


def patient_x(affine: np.ndarray, slices: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """LPS x (mm) of voxels given as index arrays."""
    return affine[0, 3] + affine[0, 0] * columns + affine[0, 1] * rows + affine[0, 2] * slices


def segment_lungs(hu: np.ndarray, affine: np.ndarray, spacing_mm: tuple[float, float, float],
                  air_hu: float = AIR_HU) -> LungMask:
    """The lungs of a chest CT volume, right (1) and left (2).

    The two largest components of body air are the lungs when both are large; when they touch (through
    the airways or a thin anterior junction) the single component is split at the patient-x midline between
    its two halves' centres.

    Whole-volume temporaries are boolean or uint16 and voxel coordinates are made one slice at a time, so
    the step needs less than one more float32 volume's worth of memory on top of `hu`.
    """
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    components, count = label_compact(_open(fill_holes_by_slice(body_air(hu, air_hu))))
    out = np.zeros(hu.shape, np.uint8)
    if count == 0:
        return LungMask(out)
    sizes = component_sizes(components, count)[1:]
    order = np.argsort(sizes)[::-1]
    big = [int(i) + 1 for i in order[:2] if sizes[i] * voxel_ml >= MIN_LUNG_ML]
    if not big:
        return LungMask(out)
    midline = _midline_x(hu, affine, air_hu)
    if len(big) == 2 and sizes[big[1] - 1] >= 0.25 * sizes[big[0] - 1]:
        sides = [LungMask.LEFT if _mean_x(components, component, affine) > midline else LungMask.RIGHT
                 for component in big]
        if len(set(sides)) == 2:
            for component, side in zip(big, sides, strict=True):
                _paint(out, components, component, side)
            return LungMask(out)
        big = big[:1] if sizes[big[0] - 1] >= 2 * sizes[big[1] - 1] else big
    # One component holds both lungs (or the two found are on one side): split by patient x.
    for index in range(out.shape[0]):
        r, c = np.nonzero(np.isin(components[index], big))
        x = patient_x(affine, index, r, c)
        out[index, r, c] = np.where(x > midline, LungMask.LEFT, LungMask.RIGHT)
    return LungMask(out)


def _open(mask: np.ndarray) -> np.ndarray:
    """`ndimage.binary_opening` (6-connected) written back into `mask`: two volumes alive at a time, not three."""
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(3, 1)
    eroded = ndimage.binary_erosion(mask, structure)
    return ndimage.binary_dilation(eroded, structure, output=mask)


def _mean_x(components: np.ndarray, component: int, affine: np.ndarray) -> float:
    """Mean patient x of one component's voxels, from index sums gathered slice by slice (x is linear in them)."""
    n, sums = 0, np.zeros(3, np.int64)  # slice, row, column
    for index in range(components.shape[0]):
        r, c = np.nonzero(components[index] == component)
        n += r.size
        sums += (index * r.size, int(r.sum()), int(c.sum()))
    s_mean, r_mean, c_mean = sums / n
    return float(patient_x(affine, s_mean, r_mean, c_mean))


def _paint(out: np.ndarray, components: np.ndarray, component: int, value: int) -> None:
    for index in range(out.shape[0]):
        out[index][components[index] == component] = value


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
