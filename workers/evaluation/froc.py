"""FROC and CPM as LUNA16 scores them (noduleCADEvaluationLUNA16.py).

A candidate hits a nodule when its centre lies inside the nodule's sphere (distance < diameter_mm / 2, world
millimetres). A nodule hit by several candidates counts once, with its highest-scoring candidate; the other
hits are ignored, not counted as false positives. Candidates hitting no nodule are false positives. A
nodule no candidate hits stays in the denominator and is never reached. Sensitivity is read off the FROC
curve by linear interpolation at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false positives per scan; the CPM is their mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class Nodule:
    centre_mm: tuple[float, float, float]
    diameter_mm: float


@dataclass(frozen=True)
class Candidate:
    centre_mm: tuple[float, float, float]
    score: float


@dataclass
class ScanMatch:
    """One scan scored: the best score of each nodule hit (None if missed) and the false positives' scores."""

    nodule_scores: list[float | None] = field(default_factory=list)
    false_positive_scores: list[float] = field(default_factory=list)

    @property
    def hits(self) -> int:
        return sum(score is not None for score in self.nodule_scores)


def match_scan(nodules: list[Nodule], candidates: list[Candidate]) -> ScanMatch:
    matched: set[int] = set()
    nodule_scores: list[float | None] = []
    for nodule in nodules:
        centre = np.asarray(nodule.centre_mm)
        radius_sq = (nodule.diameter_mm / 2.0) ** 2
        hits = [k for k, c in enumerate(candidates) if float(((np.asarray(c.centre_mm) - centre) ** 2).sum()) < radius_sq]
        matched.update(hits)
        nodule_scores.append(max(candidates[k].score for k in hits) if hits else None)
    false_positives = [c.score for k, c in enumerate(candidates) if k not in matched]
    return ScanMatch(nodule_scores=nodule_scores, false_positive_scores=false_positives)


def froc_curve(scans: list[ScanMatch]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False positives per scan, sensitivity and the score threshold of each point, most permissive last."""
    tp = np.array([s for scan in scans for s in scan.nodule_scores if s is not None], dtype=np.float64)
    fp = np.array([s for scan in scans for s in scan.false_positive_scores], dtype=np.float64)
    n_nodules = sum(len(scan.nodule_scores) for scan in scans)
    thresholds = np.unique(np.concatenate([tp, fp]))[::-1]
    thresholds = np.concatenate([[np.inf], thresholds])
    sensitivity = np.array([(tp >= t).sum() for t in thresholds], dtype=np.float64) / max(n_nodules, 1)
    fp_per_scan = np.array([(fp >= t).sum() for t in thresholds], dtype=np.float64) / max(len(scans), 1)
    return fp_per_scan, sensitivity, thresholds


def sensitivity_at(scans: list[ScanMatch], rates=FP_RATES) -> dict[float, float]:
    fp_per_scan, sensitivity, _ = froc_curve(scans)
    # As LUNA16: the curve interpolated linearly; beyond its last point it stays at its highest sensitivity.
    return {rate: float(np.interp(rate, fp_per_scan, sensitivity)) for rate in rates}


def cpm(scans: list[ScanMatch]) -> float:
    if not any(scan.nodule_scores for scan in scans):
        return float("nan")
    return float(np.mean(list(sensitivity_at(scans).values())))
