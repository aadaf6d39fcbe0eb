"""ACR TI-RADS risk bands, the mapping from a malignancy probability to a band, and the size rule.

Mapping from probability to band
--------------------------------
A model's probability is mapped to a band by lower bounds: the band is the highest one whose lower
bound the probability reaches (TR1 below every bound). The bounds belong to the model, because they
depend on its calibration, and ship in its manifest as operating points named ``TR2`` … ``TR5``
(`band_bounds_from_operating_points`). The thyroid reference model's bounds are

    ============  =======================  ===================================
    band          probability p            TI-RADS points it stands for
    ============  =======================  ===================================
    TR1 benign    p < 0.001                0-1
    TR2           0.001 <= p < 0.004       2
    TR3           0.004 <= p < 0.02        3
    TR4           0.02  <= p < 0.65        4-6
    TR5           p >= 0.65                7 or more
    ============  =======================  ===================================

the geometric midpoints between the risks its synthetic training world assigns to adjacent point
totals (see `models/thyroid-malignancy-reference/CARD.md`); they are not real-world risks.

Size rule (ACR TI-RADS, Tessler et al., JACR 2017), on the nodule's maximum diameter
--------------------------------------------------------------------------------------
    TR1, TR2  no FNA
    TR3       FNA if >= 2.5 cm; follow-up if >= 1.5 cm
    TR4       FNA if >= 1.5 cm; follow-up if >= 1.0 cm
    TR5       FNA if >= 1.0 cm; follow-up if >= 0.5 cm
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field, model_validator


class RiskBand(StrEnum):
    TR1 = "TR1"
    TR2 = "TR2"
    TR3 = "TR3"
    TR4 = "TR4"
    TR5 = "TR5"

    @property
    def level(self) -> int:
        return int(self.value[2])

    @property
    def description(self) -> str:
        return BAND_DESCRIPTIONS[self]


BAND_DESCRIPTIONS = {
    RiskBand.TR1: "benign",
    RiskBand.TR2: "not suspicious",
    RiskBand.TR3: "mildly suspicious",
    RiskBand.TR4: "moderately suspicious",
    RiskBand.TR5: "highly suspicious",
}

# Maximum-diameter thresholds in mm: (FNA at or above, follow-up at or above). TR1 and TR2: no FNA.
SIZE_RULE_MM: dict[RiskBand, tuple[float, float]] = {
    RiskBand.TR3: (25.0, 15.0),
    RiskBand.TR4: (15.0, 10.0),
    RiskBand.TR5: (10.0, 5.0),
}

BANDED = (RiskBand.TR2, RiskBand.TR3, RiskBand.TR4, RiskBand.TR5)


def band_bounds_from_operating_points(points: Iterable) -> dict[RiskBand, float]:
    """Lower probability bounds of TR2…TR5 from operating points named after the bands."""
    by_name = {p.name: p.threshold for p in points}
    missing = [band.value for band in BANDED if band.value not in by_name]
    if missing:
        raise ValueError(f"the manifest has no operating point(s) {missing} giving the TI-RADS band bounds")
    bounds = {band: by_name[band.value] for band in BANDED}
    values = [bounds[band] for band in BANDED]
    if values != sorted(values):
        raise ValueError(f"TI-RADS band bounds must rise from TR2 to TR5; got {values}")
    return bounds


def band_for_probability(probability: float, bounds: dict[RiskBand, float]) -> RiskBand:
    band = RiskBand.TR1
    for candidate in BANDED:
        if probability >= bounds[candidate]:
            band = candidate
    return band


Action = Literal["fna", "follow-up", "no-fna", "size-unknown"]


class Recommendation(BaseModel):
    """What ACR TI-RADS recommends for the band and size, in words a clinician recognises."""

    action: Action
    text: str
    fna_at_mm: float | None = Field(None, description="The band's FNA size threshold; None when the band has no FNA")
    follow_up_at_mm: float | None = None

    @model_validator(mode="after")
    def _thresholds_with_banded_actions(self) -> Recommendation:
        if self.action in ("fna", "follow-up", "size-unknown") and self.fna_at_mm is None:
            raise ValueError(f"action {self.action!r} needs the band's size thresholds")
        return self


def recommend(band: RiskBand, max_diameter_mm: float | None) -> Recommendation:
    label = f"{band.value} ({band.description})"
    if band not in SIZE_RULE_MM:
        return Recommendation(action="no-fna", text=f"{label}: no FNA.")
    fna_at, follow_at = SIZE_RULE_MM[band]
    rule = f"FNA if >= {fna_at / 10:g} cm, follow-up if >= {follow_at / 10:g} cm"
    if max_diameter_mm is None:
        return Recommendation(
            action="size-unknown", fna_at_mm=fna_at, follow_up_at_mm=follow_at,
            text=f"{label}: nodule size is unknown (no pixel spacing in the image or options), so the size rule "
                 f"cannot be applied ({rule}). Measure the nodule, or resend with options.pixel_spacing_mm.",
        )
    size = f"{max_diameter_mm / 10:.1f} cm"
    if max_diameter_mm >= fna_at:
        action, text = "fna", f"{label}, {size}: FNA recommended ({rule})."
    elif max_diameter_mm >= follow_at:
        action, text = "follow-up", f"{label}, {size}: follow-up ultrasound; no FNA ({rule})."
    else:
        action, text = "no-fna", f"{label}, {size}: below the follow-up size; no FNA or follow-up ({rule})."
    return Recommendation(action=action, text=text, fna_at_mm=fna_at, follow_up_at_mm=follow_at)
