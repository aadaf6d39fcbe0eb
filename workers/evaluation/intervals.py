"""95 % intervals by bootstrap over cases, with scipy.stats.bootstrap.

Every figure is `{"value", "ci95": [low, high], "n"}`. Resampling is over cases (over scans for nodules, whose
findings move together with their scan, as LUNA16's own bootstrap does), by index, so one statistic function
serves any per-case data. Classification figures resample positives and negatives apart (two samples,
`paired=False`): a stratified bootstrap, which keeps AUC, sensitivity and specificity defined in every resample.
BCa where it is defined, percentile otherwise (BCa needs a jackknife that varies); where some resamples leave
the figure undefined, the percentile interval of the others, with their count.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

N_RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class BootstrapSettings:
    seed: int = 20261202
    n_resamples: int = N_RESAMPLES

    def as_json(self) -> dict:
        return {"method": "scipy.stats.bootstrap, BCa (percentile where BCa is undefined)",
                "confidence_level": CONFIDENCE, "n_resamples": self.n_resamples, "seed": self.seed}


def figure(value: float, ci95: tuple[float, float] | None, n: int) -> dict:
    finite = ci95 is not None and all(np.isfinite(ci95))
    return {"value": _round(value), "ci95": [_round(ci95[0]), _round(ci95[1])] if finite else None, "n": int(n)}


def bootstrap_figure(statistic: Callable[..., float], groups: Sequence[np.ndarray], settings: BootstrapSettings,
                     n: int | None = None) -> dict:
    """`statistic(*index_arrays)` computes the figure on the cases at those indices, one array per group
    (one group: all cases; two: positives and negatives, resampled apart)."""
    groups = [np.asarray(g, dtype=np.intp) for g in groups]
    value = float(statistic(*groups))
    n = sum(len(g) for g in groups) if n is None else n
    if not np.isfinite(value) or any(len(g) < 2 for g in groups):
        return figure(value, None, n)
    interval = None
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # degenerate resamples warn; the NaN they give is handled below
            result = stats.bootstrap(
                tuple(groups), statistic, n_resamples=settings.n_resamples, vectorized=False, paired=False,
                confidence_level=CONFIDENCE, method=method, rng=np.random.default_rng(settings.seed),
            )
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
        if np.isfinite(low) and np.isfinite(high):
            interval = (low, high)
            break
    if interval is None:
        return _percentile_without_undefined(statistic, groups, settings, value, n)
    return figure(value, interval, n)


def _percentile_without_undefined(statistic, groups, settings: BootstrapSettings, value: float, n: int) -> dict:
    """Where some resamples leave the figure undefined (no nodule among the scans drawn, one class only),
    scipy's interval is NaN: the percentile interval of the defined resamples, their count recorded."""
    rng = np.random.default_rng(settings.seed)
    draws = [g[rng.integers(0, len(g), (settings.n_resamples, len(g)))] for g in groups]
    values = np.array([statistic(*(d[b] for d in draws)) for b in range(settings.n_resamples)], dtype=np.float64)
    defined = values[np.isfinite(values)]
    if len(defined) < settings.n_resamples // 2:
        return figure(value, None, n)
    alpha = (1 - CONFIDENCE) / 2
    result = figure(value, (float(np.quantile(defined, alpha)), float(np.quantile(defined, 1 - alpha))), n)
    result["undefined_resamples"] = int(settings.n_resamples - len(defined))
    return result


def mean_figure(values: np.ndarray, settings: BootstrapSettings) -> dict:
    """Mean of a per-case value (Dice, volume error) with its interval."""
    values = np.asarray(values, dtype=np.float64)
    return bootstrap_figure(lambda idx: float(values[idx].mean()) if len(idx) else np.nan,
                            [np.arange(len(values))], settings)


def pooled_ratio_figure(numerators: np.ndarray, denominators: np.ndarray, settings: BootstrapSettings,
                        scale: float = 1.0) -> dict:
    """`scale * sum(numerators) / sum(denominators)` over the cases drawn, each case one (numerator,
    denominator) pair: a Dice pooled over all voxels (2·overlap, sizes) with its interval over cases."""
    numerators = np.asarray(numerators, dtype=np.float64)
    denominators = np.asarray(denominators, dtype=np.float64)

    def ratio(idx):
        total = denominators[idx].sum()
        return float(scale * numerators[idx].sum() / total) if total else np.nan

    return bootstrap_figure(ratio, [np.arange(len(numerators))], settings)


def _round(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 6)
