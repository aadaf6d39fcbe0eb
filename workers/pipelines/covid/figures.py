"""The result's figures: volumes and involvement from the true voxel spacing, counted slice by slice."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from app.schemas.manifest import ModelManifest
from app.schemas.quality import Quality
from app.schemas.results import (
    CovidLesionSegmentationResult,
    InvolvementByZone,
    InvolvementPercent,
    LesionVolumes,
    LungVolumes,
)
from workers.imaging.ct_series import CTVolume
from workers.imaging.lungs import LungMask
from workers.pipelines.covid.segments import CONSOLIDATION, GGO
from workers.pipelines.covid.zones import percent, zone_involvement

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


def build_result(ct: CTVolume, labels: np.ndarray, lungs: LungMask, manifest: ModelManifest,
                 quality: Quality | None = None) -> CovidLesionSegmentationResult:
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
            left=percent(counts.lesion_in_lung[left], counts.lung[left]),
            right=percent(counts.lesion_in_lung[right], counts.lung[right]),
            total=percent(counts.lesion, counts.lung[left] + counts.lung[right])),
        involvement_by_zone=InvolvementByZone(left=zone_involvement(lungs.labels, left, labels, ct.affine),
                                              right=zone_involvement(lungs.labels, right, labels, ct.affine)),
        affected_slices=counts.affected_slices,
        spacing_mm=tuple(round(float(v), 4) for v in ct.spacing_mm),
        n_slices=ct.geometry.n_slices,
        definitions=DEFINITIONS,
        warnings=list(ct.warnings),
        quality=quality,
        research_use_only=manifest.research_use_only,
    )

