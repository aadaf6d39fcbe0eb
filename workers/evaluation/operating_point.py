"""Choosing a site's operating point on its labelled data, and writing it where the service reads it.

`sensitivity>=0.975` takes the highest threshold whose sensitivity on the site's cases reaches 0.975 (so the
most specific such point); `specificity>=0.9` the lowest threshold whose specificity reaches 0.9. Thresholds
are the cases' own probabilities, so the figures reported for the point are exactly what the service gives.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.schemas.manifest import ModelManifest, OperatingPoint
from app.schemas.site import load_site_config, merge_site_points
from workers.evaluation.base import BinaryOutcomes
from workers.evaluation.classification import binary_figures
from workers.evaluation.intervals import BootstrapSettings

RULE = re.compile(r"^\s*(sensitivity|specificity)\s*>=\s*(0(\.\d+)?|1(\.0+)?)\s*$")


@dataclass(frozen=True)
class OperatingPointRule:
    measure: str
    target: float

    @classmethod
    def parse(cls, text: str) -> OperatingPointRule:
        match = RULE.match(text)
        if match is None:
            raise ValueError(f"--choose-operating-point {text!r}: write sensitivity>=0.975 or specificity>=0.9 "
                             "(a fraction between 0 and 1)")
        return cls(match.group(1), float(match.group(2)))

    def __str__(self) -> str:
        return f"{self.measure}>={self.target:g}"


@dataclass(frozen=True)
class SitePoint:
    point: OperatingPoint
    figures: dict


def choose_threshold(outcomes: BinaryOutcomes, rule: OperatingPointRule) -> float:
    truth, probability = outcomes.truth.astype(bool), outcomes.probability.astype(np.float64)
    if not truth.any() or truth.all():
        raise ValueError("choosing an operating point needs positive and negative cases in the labels")
    candidates = np.unique(np.r_[probability, 1.0])  # ascending; "called" is probability >= threshold
    if rule.measure == "sensitivity":
        reaching = [t for t in candidates if (probability[truth] >= t).mean() >= rule.target]
        # The lowest candidate calls every case, so some threshold always reaches. Results round probabilities
        # to 6 decimals while the service compares the exact one: one step lower keeps the rounded cases called.
        return round(max(float(max(reaching)) - 1e-6, 0.0), 6)
    reaching = [t for t in candidates if (probability[~truth] < t).mean() >= rule.target]
    if not reaching:
        raise ValueError(f"no threshold reaches {rule} on these cases")
    return float(min(reaching))


def choose_operating_point(outcomes: BinaryOutcomes, rule: OperatingPointRule, name: str,
                           settings: BootstrapSettings) -> SitePoint:
    threshold = choose_threshold(outcomes, rule)
    figures = binary_figures(outcomes.truth, outcomes.probability, {name: threshold}, settings)
    sensitivity, specificity = figures[f"sensitivity@{name}"], figures[f"specificity@{name}"]
    n_pos, n_neg = int(outcomes.truth.sum()), int((~outcomes.truth.astype(bool)).sum())
    point = OperatingPoint(
        name=name, threshold=threshold, sensitivity=sensitivity["value"], specificity=specificity["value"],
        sensitivity_ci95=tuple(sensitivity["ci95"]) if sensitivity["ci95"] else None,
        specificity_ci95=tuple(specificity["ci95"]) if specificity["ci95"] else None,
        measured_on=f"chosen by medimg eval as {rule} on the site's labelled data ({n_pos} positive, {n_neg} "
                    f"negative cases); 95 % intervals by bootstrap over cases (seed {settings.seed}, "
                    f"{settings.n_resamples} resamples)",
    )
    return SitePoint(point=point, figures=figures)


def write_site_config(path: Path, manifest: ModelManifest, point: OperatingPoint, site: str = "site") -> None:
    """Adds (or replaces) the point in the site file, made its model's default; other models' points kept."""
    existing = load_site_config(path) if path.is_file() else None
    config = merge_site_points(existing, manifest, point, site)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    partial.write_text(json.dumps(config.model_dump(mode="json"), indent=2) + "\n")
    partial.replace(path)
