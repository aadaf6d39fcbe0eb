"""COVID-19 lesion figures from the label volume and the lung mask: volumes, involvement, zones.

Counted slice by slice from the true voxel spacing, so memory stays at one slice of masks whatever the series.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from app.schemas.manifest import ModelManifest
from app.schemas.results import (
    CovidLesionSegmentationResult,
    InvolvementByZone,
    InvolvementPercent,
    LesionVolumes,
    LungVolumes,
    ZoneInvolvement,
)
from workers.imaging.ct_series import CTVolume
from workers.imaging.lungs import LungMask

# The model's classes, in the order of its manifest's class_names.
BACKGROUND, GGO, CONSOLIDATION = 0, 1, 2

DEFINITIONS = {
    "lung_volume_ml": "Volume of each lung's mask (air-density lung found by thresholding at -320 HU, holes "
    "filled, plus any lesion touching it), from the series' voxel spacing.",
    "lesion_volume_ml": "Volume of voxels labelled ground-glass opacity or consolidation inside the lungs; total "
    "is their sum.",
    "involvement_percent": "Lesion volume in a lung as a percentage of that lung's volume; total is over both "
    "lungs.",
    "involvement_by_zone": "The same percentage within the upper, middle and lower thirds of each lung's height "
    "along the patient's superior-inferior axis (geometric thirds, not anatomical lobes).",
    "affected_slices": "0-based indices (series sorted along the slice normal) of slices holding any lesion "
    "voxel; slices.json maps them to SOPInstanceUIDs and artifact names.",
    "severity": "No lobe-based CT severity score is given: lobes are not segmented.",
}


def _percent(part: int, whole: int) -> float:
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
    lower, middle, upper = (_percent(int(a), int(b)) for a, b in zip(lesion_counts, lung_counts, strict=True))
    return ZoneInvolvement(upper=upper, middle=middle, lower=lower)


@dataclass
class _VoxelCounts:
    """Every count the result needs, gathered slice by slice: no whole-volume masks."""

    ggo: int = 0
    consolidation: int = 0
    lesion: int = 0
    lung: dict[int, int] = field(default_factory=lambda: {LungMask.RIGHT: 0, LungMask.LEFT: 0})
    lesion_in_lung: dict[int, int] = field(default_factory=lambda: {LungMask.RIGHT: 0, LungMask.LEFT: 0})
    affected_slices: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, labels: np.ndarray, lungs: LungMask) -> _VoxelCounts:
        counts = cls()
        for index, (plane, lung_plane) in enumerate(zip(labels, lungs.labels, strict=True)):
            counts.add_slice(index, plane, lung_plane)
        return counts

    def add_slice(self, index: int, plane: np.ndarray, lung_plane: np.ndarray) -> None:
        lesion = plane > 0
        n_lesion = int(np.count_nonzero(lesion))
        if n_lesion:
            self.affected_slices.append(index)
        self.lesion += n_lesion
        self.ggo += int(np.count_nonzero(plane == GGO))
        self.consolidation += int(np.count_nonzero(plane == CONSOLIDATION))
        for side in self.lung:
            in_side = lung_plane == side
            self.lung[side] += int(np.count_nonzero(in_side))
            self.lesion_in_lung[side] += int(np.count_nonzero(in_side & lesion))


def build_result(ct: CTVolume, labels: np.ndarray, lungs: LungMask,
                 manifest: ModelManifest) -> CovidLesionSegmentationResult:
    voxel_ml = float(np.prod(ct.spacing_mm)) / 1000.0
    counts = _VoxelCounts.of(labels, lungs)
    right, left = LungMask.RIGHT, LungMask.LEFT
    return CovidLesionSegmentationResult(
        series_instance_uid=ct.series_instance_uid,
        lung_volume_ml=LungVolumes(left=round(counts.lung[left] * voxel_ml, 2),
                                   right=round(counts.lung[right] * voxel_ml, 2)),
        lesion_volume_ml=LesionVolumes(
            ggo=round(counts.ggo * voxel_ml, 2), consolidation=round(counts.consolidation * voxel_ml, 2),
            total=round((counts.ggo + counts.consolidation) * voxel_ml, 2)),
        involvement_percent=InvolvementPercent(
            left=_percent(counts.lesion_in_lung[left], counts.lung[left]),
            right=_percent(counts.lesion_in_lung[right], counts.lung[right]),
            total=_percent(counts.lesion, counts.lung[left] + counts.lung[right])),
        involvement_by_zone=InvolvementByZone(left=zone_involvement(lungs.labels, left, labels, ct.affine),
                                              right=zone_involvement(lungs.labels, right, labels, ct.affine)),
        affected_slices=counts.affected_slices,
        spacing_mm=tuple(round(float(v), 4) for v in ct.spacing_mm),
        n_slices=ct.geometry.n_slices,
        definitions=DEFINITIONS,
        warnings=list(ct.warnings),
        research_use_only=manifest.research_use_only,
    )
