"""Quality gate for a CT series: slices thin and dense enough for the model, none missing in a run, a chest in
the field of view with the lungs covered, and metal (the source of streaks) measured.

Lung tissue is counted by attenuation (-950 to -500 HU: aerated lung, not the air around the patient, which
is below -950), on a copy subsampled in plane to about 128 px: no connectivity is needed, so a targeted field
of view whose lung touches the image edge counts the same as a whole chest.
"""

from __future__ import annotations

import numpy as np

from app.imaging.ct_geometry import VolumeGeometry
from app.schemas.manifest import CTQuality
from app.schemas.quality import Quality, QualityReason
from workers.quality import verdict

LUNG_HU = (-950.0, -500.0)
_PLANE_SIDE = 128


def check_ct(hu: np.ndarray, geometry: VolumeGeometry, limits: CTQuality) -> Quality:
    """`hu`: (slices, rows, columns) in Hounsfield units, slice 0 lowest along the slice normal."""
    column_mm, row_mm, slice_mm = geometry.spacing_mm
    thickness = [s.slice_thickness for s in geometry.slices if s.slice_thickness]
    steps = np.diff(geometry.slice_positions_mm)
    missing = np.maximum(np.round(steps / slice_mm).astype(int) - 1, 0) if steps.size else np.zeros(0, int)
    measures: dict = {
        "slice_spacing_mm": float(slice_mm),
        "slice_thickness_mm": float(max(thickness)) if thickness else None,
        "pixel_spacing_mm": float(max(column_mm, row_mm)),
        "missing_slices": int(missing.sum()),
        "longest_missing_run": int(missing.max()) if missing.size else 0,
    }
    reasons = _sampling_reasons(measures, limits)
    reasons += _content_reasons(hu, geometry, measures, limits)
    return verdict(reasons, measures)


def _sampling_reasons(measures: dict, limits: CTQuality) -> list[QualityReason]:
    reasons = []
    if measures["slice_spacing_mm"] > limits.max_slice_spacing_mm:
        reasons.append(QualityReason(code="slices-too-far-apart", detail=(
            f"Slices are {measures['slice_spacing_mm']:g} mm apart; this model reads series up to "
            f"{limits.max_slice_spacing_mm:g} mm. Send a thinner reconstruction of the same scan.")))
    thickness = measures["slice_thickness_mm"]
    if thickness is not None and thickness > limits.max_slice_thickness_mm:
        reasons.append(QualityReason(code="slices-too-thick", detail=(
            f"Slices are {thickness:g} mm thick; this model reads up to {limits.max_slice_thickness_mm:g} mm. "
            "Send a thin-slice reconstruction of the same scan.")))
    if measures["pixel_spacing_mm"] > limits.max_pixel_spacing_mm:
        reasons.append(QualityReason(code="pixels-too-coarse", detail=(
            f"Pixels are {measures['pixel_spacing_mm']:g} mm; this model needs at most "
            f"{limits.max_pixel_spacing_mm:g} mm. Send a reconstruction with a smaller field of view or a larger "
            "matrix.")))
    if measures["longest_missing_run"] > limits.max_missing_run:
        reasons.append(QualityReason(code="missing-slices", detail=(
            f"{measures['missing_slices']} slice(s) are missing, {measures['longest_missing_run']} in a row "
            f"(at most {limits.max_missing_run} in a row can be interpolated over). Send the complete series.")))
    return reasons


def _content_reasons(hu: np.ndarray, geometry: VolumeGeometry, measures: dict,
                     limits: CTQuality) -> list[QualityReason]:
    step = max(1, int(np.ceil(max(hu.shape[1:]) / _PLANE_SIDE)))
    small = hu[:, ::step, ::step]
    column_mm, row_mm, slice_mm = geometry.spacing_mm
    voxel_ml = column_mm * row_mm * slice_mm * step * step / 1000.0
    lung_area = ((small > LUNG_HU[0]) & (small < LUNG_HU[1])).sum(axis=(1, 2))
    measures["lung_volume_ml"] = float(lung_area.sum() * voxel_ml)
    peak = float(lung_area.max()) if lung_area.size else 0.0
    # Slice 0 is lowest along the normal; the normal's patient z says whether that is the feet or the head end.
    superior_last = geometry.normal[2] >= 0
    first, last = (float(lung_area[0]) / peak, float(lung_area[-1]) / peak) if peak else (0.0, 0.0)
    measures["lung_fraction_superior_end"] = last if superior_last else first
    measures["lung_fraction_inferior_end"] = first if superior_last else last
    measures["metal_ml"] = float((small >= limits.metal_hu).sum() * voxel_ml)

    reasons = []
    if measures["lung_volume_ml"] < limits.min_lung_volume_ml:
        reasons.append(QualityReason(code="no-chest-in-field-of-view", detail=(
            f"Only {measures['lung_volume_ml']:.0f} ml of lung tissue is in the field of view (at least "
            f"{limits.min_lung_volume_ml:.0f} ml expected of a chest CT). Send a chest CT series.")))
    elif limits.require_full_lung_coverage:
        for end in ("superior", "inferior"):
            fraction = measures[f"lung_fraction_{end}_end"]
            if fraction > limits.max_end_slice_lung_fraction:
                reasons.append(QualityReason(code="lungs-cut-off", detail=(
                    f"The lungs are cut at the {end} end of the series (its end slice holds {fraction:.0%} of the "
                    f"largest lung area; at most {limits.max_end_slice_lung_fraction:.0%}). Send a series covering "
                    "the lungs from apex to base.")))
    if limits.max_metal_ml is not None and measures["metal_ml"] > limits.max_metal_ml:
        reasons.append(QualityReason(code="metal-streaks", detail=(
            f"{measures['metal_ml']:.1f} ml of metal (>= {limits.metal_hu:g} HU) is in the field of view (at most "
            f"{limits.max_metal_ml:g} ml); its streaks make the lungs unreadable. Send a series with metal "
            "artefact reduction.")))
    return reasons
