"""Summaries of repeated benchmark runs: the median with the min–max range, never the best run.

Rows are measured interleaved (service, peer, limit, service, peer, limit, …) so that the machine's drift
hits every row alike; a ratio is taken within each repetition, then summarised, so that drift between
repetitions cancels out of it.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def spread(values: Sequence[float]) -> dict[str, float]:
    """{"median", "min", "max", "n"} of one figure over the repetitions."""
    if not values:
        raise ValueError("no repetitions to summarise")
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "n": len(values)}


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> dict[str, float]:
    """The spread of numerator/denominator taken repetition by repetition (both measured in the same one)."""
    if len(numerators) != len(denominators):
        raise ValueError(f"{len(numerators)} against {len(denominators)} repetitions: ratios need pairs")
    return spread([n / d for n, d in zip(numerators, denominators, strict=True)])


def text(summary: dict[str, float], unit: str = "") -> str:
    """"80.1 /s (76.0–83.2)": the median, then the range; a single run shows no range."""
    if summary["n"] == 1:
        return f"{summary['median']:g}{unit}"
    return f"{summary['median']:g}{unit} ({summary['min']:g}–{summary['max']:g})"
