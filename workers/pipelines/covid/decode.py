"""Decoding the model's labels: small components removed, lesions kept only where they belong to the lungs."""

from __future__ import annotations

import numpy as np

from app.schemas.manifest import ModelManifest
from workers.imaging.lungs import LungMask, component_sizes, label_compact, patient_x


def decode_labels(raw: np.ndarray, lungs: LungMask, affine: np.ndarray,
                  manifest: ModelManifest) -> tuple[np.ndarray, LungMask]:
    """Small lesion components removed; lesions kept only where they belong to the lungs.

    The classical lung mask is air, so dense consolidation against the chest wall falls outside it: a lesion
    component that touches the lung mask is kept whole and added to the lung it lies in (by patient x);
    components not touching the lungs are dropped. Returns the labels and the lungs so extended.

    In place, so that a job holds no second copy of either volume: the labels returned are `raw` with the
    dropped components cleared, and the lungs returned share `lungs.labels`, extended. Components are
    labelled only within the lesions' bounding box, and the rest goes slice by slice.
    """
    box = _lesion_box(raw)
    if box is None:
        return raw, lungs
    box_labels, box_lungs = raw[box], lungs.labels[box]
    components, count = label_compact(box_labels, structure=np.ones((3, 3, 3), bool))
    min_voxels = manifest.decoding.min_component_voxels or 0
    keep = _touching_lungs(components, count, lungs.labels, box)
    keep &= component_sizes(components, count) >= max(min_voxels, 1)
    keep[0] = False
    midline = _midline(lungs, affine)  # of the lungs as found: before any lesion extends them
    origin = [axis.start for axis in box]
    for k, plane in enumerate(components):
        kept = keep[plane]
        box_labels[k][~kept] = 0
        r, c = np.nonzero(kept & (box_lungs[k] == 0))
        if r.size:
            x = patient_x(affine, origin[0] + k, r + origin[1], c + origin[2])
            box_lungs[k][r, c] = np.where(x > midline, LungMask.LEFT, LungMask.RIGHT)
    return raw, lungs


def _lesion_box(raw: np.ndarray) -> tuple[slice, slice, slice] | None:
    """The smallest box holding every nonzero voxel of the label volume; None when there is none."""
    from scipy import ndimage

    boxes = [box for box in ndimage.find_objects(raw) if box is not None]
    if not boxes:
        return None
    return tuple(slice(min(b[axis].start for b in boxes), max(b[axis].stop for b in boxes)) for axis in range(3))


def _touching_lungs(components: np.ndarray, count: int, lung_labels: np.ndarray,
                    box: tuple[slice, slice, slice]) -> np.ndarray:
    """Which components (labelled within `box`) touch the lungs grown by one voxel, 6-connected.

    Slice by slice: in-plane the lungs grow within a one-pixel margin around the box, across slices by the
    neighbouring slices themselves, so no whole-volume dilation is needed.
    """
    from scipy import ndimage

    planes, rows, columns = box
    outer_rows = slice(max(rows.start - 1, 0), rows.stop + 1)
    outer_columns = slice(max(columns.start - 1, 0), columns.stop + 1)
    inner = (slice(rows.start - outer_rows.start, rows.stop - outer_rows.start),
             slice(columns.start - outer_columns.start, columns.stop - outer_columns.start))
    cross = ndimage.generate_binary_structure(2, 1)
    touching = np.zeros(count + 1, bool)
    for k, index in enumerate(range(planes.start, planes.stop)):
        near = ndimage.binary_dilation(lung_labels[index, outer_rows, outer_columns] > 0, cross)[inner]
        for neighbour in (index - 1, index + 1):
            if 0 <= neighbour < lung_labels.shape[0]:
                near |= lung_labels[neighbour, rows, columns] > 0
        touching[components[k][near]] = True
    return touching


def _midline(lungs: LungMask, affine: np.ndarray) -> float:
    right_x = _mean_x(lungs.labels, LungMask.RIGHT, affine)
    left_x = _mean_x(lungs.labels, LungMask.LEFT, affine)
    return (right_x + left_x) / 2 if right_x is not None and left_x is not None else 0.0


def _mean_x(lung_labels: np.ndarray, side: int, affine: np.ndarray) -> float | None:
    s, r, c = np.nonzero(lung_labels[:, ::4, ::4] == side)
    if s.size == 0:
        return None
    return float(patient_x(affine, s, r * 4, c * 4).mean())

