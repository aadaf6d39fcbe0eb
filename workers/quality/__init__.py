"""Input quality gates, one module per input kind: pure functions on arrays and the manifest's limits, each
returning an `app.schemas.quality.Quality`. A pipeline calls its gate once, after loading and before
preprocessing, and returns `ungradable(...)` (workers/pipelines/base.py) instead of running the model when the
gate refuses."""

from __future__ import annotations

from app.schemas.quality import Measure, Quality, QualityReason


def verdict(reasons: list[QualityReason], measures: dict[str, Measure]) -> Quality:
    rounded = {k: round(v, 4) if isinstance(v, float) else v for k, v in measures.items()}
    return Quality(gradable=not reasons, reasons=reasons, measures=rounded)
