"""The documented mapping from probability to ACR TI-RADS band, and the band's size rule."""

from __future__ import annotations

import pytest

from app.schemas.manifest import OperatingPoint
from app.schemas.tirads import (
    RiskBand,
    band_bounds_from_operating_points,
    band_for_probability,
    recommend,
)

BOUNDS = {RiskBand.TR2: 0.001, RiskBand.TR3: 0.004, RiskBand.TR4: 0.02, RiskBand.TR5: 0.65}


@pytest.mark.parametrize(
    ("probability", "band"),
    [(0.0, "TR1"), (0.0009, "TR1"), (0.001, "TR2"), (0.0039, "TR2"), (0.004, "TR3"), (0.0199, "TR3"),
     (0.02, "TR4"), (0.649, "TR4"), (0.65, "TR5"), (1.0, "TR5")],
)
def test_band_for_probability_uses_lower_bounds(probability: float, band: str) -> None:
    assert band_for_probability(probability, BOUNDS) == RiskBand(band)


def test_band_bounds_come_from_operating_points_named_after_bands() -> None:
    points = [OperatingPoint(name=b.value, threshold=t, measured_on="test") for b, t in BOUNDS.items()]
    assert band_bounds_from_operating_points(points) == BOUNDS
    with pytest.raises(ValueError, match="TR5"):
        band_bounds_from_operating_points(points[:3])
    unordered = [OperatingPoint(name=p.name, threshold=1 - p.threshold, measured_on="test") for p in points]
    with pytest.raises(ValueError, match="rise"):
        band_bounds_from_operating_points(unordered)


@pytest.mark.parametrize(
    ("band", "size_mm", "action"),
    [
        ("TR1", 40.0, "no-fna"), ("TR2", 40.0, "no-fna"),
        ("TR3", 25.0, "fna"), ("TR3", 24.9, "follow-up"), ("TR3", 15.0, "follow-up"), ("TR3", 14.9, "no-fna"),
        ("TR4", 15.0, "fna"), ("TR4", 14.9, "follow-up"), ("TR4", 10.0, "follow-up"), ("TR4", 9.9, "no-fna"),
        ("TR5", 10.0, "fna"), ("TR5", 9.9, "follow-up"), ("TR5", 5.0, "follow-up"), ("TR5", 4.9, "no-fna"),
    ],
)
def test_recommend_applies_the_acr_size_rule(band: str, size_mm: float, action: str) -> None:
    recommendation = recommend(RiskBand(band), size_mm)
    assert recommendation.action == action
    assert band in recommendation.text


def test_recommend_without_size_says_size_is_unknown() -> None:
    recommendation = recommend(RiskBand.TR4, None)
    assert recommendation.action == "size-unknown"
    assert "size is unknown" in recommendation.text and "1.5 cm" in recommendation.text
    assert recommendation.fna_at_mm == 15.0 and recommendation.follow_up_at_mm == 10.0
    assert recommend(RiskBand.TR2, None).action == "no-fna"
