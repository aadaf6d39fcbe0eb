"""Quality gate for a B-mode ultrasound frame: an imaging region with tissue in it, the scale known (when the
manifest requires it), and — once the nodule is outlined — the nodule inside the field, not cut by its edge.

The region is the one the pipeline uses (the DICOM US region, else the detected rectangle); "lit" is what the
region detector calls lit: brighter than the frame's border background by a margin.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from app.schemas.manifest import UltrasoundQuality
from app.schemas.quality import Quality, QualityReason
from workers.quality import verdict

Box = tuple[int, int, int, int]
_LIT_MARGIN = 10.0


def check_frame(grey: np.ndarray, region: Box, spacing_mm: tuple[float, float] | None,
                limits: UltrasoundQuality) -> Quality:
    rows, cols = grey.shape
    x0, y0, x1, y1 = region
    inside = grey[y0:y1, x0:x1].astype(np.float32)
    ring = np.concatenate([grey[:2].ravel(), grey[-2:].ravel(), grey[:, :2].ravel(), grey[:, -2:].ravel()])
    background = min(float(np.percentile(ring, 10)), 30.0)
    measures: dict = {
        "region_fraction": float(inside.size / (rows * cols)),
        "lit_fraction": float((inside > background + _LIT_MARGIN).mean()) if inside.size else 0.0,
        "texture": float(inside.std()) if inside.size else 0.0,
        "scale_known": spacing_mm is not None,
    }
    reasons = []
    if (measures["region_fraction"] < limits.min_region_fraction or measures["lit_fraction"] < limits.min_lit_fraction
            or measures["texture"] < limits.min_texture):
        reasons.append(QualityReason(code="no-imaging-region", detail=(
            f"No B-mode image was found in the frame (region {measures['region_fraction']:.0%} of the frame, "
            f"{measures['lit_fraction']:.0%} of it lit, speckle std {measures['texture']:.1f}; needs "
            f"{limits.min_region_fraction:.0%}, {limits.min_lit_fraction:.0%} and {limits.min_texture:g}). "
            "Send a frame showing the scan, not a blank, frozen-menu or report screen.")))
    if limits.require_scale and spacing_mm is None:
        reasons.append(QualityReason(code="scale-unknown", detail=(
            "The frame's depth scale is unknown, so the nodule cannot be measured. Send DICOM with an ultrasound "
            "region or PixelSpacing, or give options.pixel_spacing_mm.")))
    return verdict(reasons, measures)


def check_nodule(mask: np.ndarray, region: Box, frame_quality: Quality, limits: UltrasoundQuality) -> Quality:
    """The frame's verdict, plus whether the outlined nodule lies inside the imaging region: a nodule the field
    cuts has a straight stretch of its outline on the region's edge."""
    x0, y0, x1, y1 = region
    inside = np.zeros(mask.shape, bool)
    inside[y0:y1, x0:x1] = True
    mask = mask & inside
    outline = mask & ~ndimage.binary_erosion(mask)
    on_edge = outline & ~ndimage.binary_erosion(inside)
    fraction = float(on_edge.sum() / outline.sum()) if outline.any() else 1.0
    measures = {**frame_quality.measures, "nodule_edge_fraction": fraction}
    reasons = list(frame_quality.reasons)
    if fraction > limits.max_nodule_edge_fraction:
        reasons.append(QualityReason(code="nodule-outside-field", detail=(
            f"{fraction:.0%} of the nodule's outline lies on the edge of the imaging region (at most "
            f"{limits.max_nodule_edge_fraction:.0%}): part of the nodule is outside the field. Rescan with the whole "
            "nodule in view (more depth or a wider sector).")))
    return verdict(reasons, measures)
