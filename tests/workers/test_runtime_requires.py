"""WorkerRuntime loads and warms the models a served model `requires`, and hands them to its pipeline."""

from __future__ import annotations

from app.config import Settings
from workers.runtime import WorkerRuntime

CLASSIFIER = "thyroid-malignancy-reference"
SEGMENTER = "thyroid-nodule-segmentation-reference"


def test_warm_up_loads_required_models(tmp_path) -> None:
    runtime = WorkerRuntime.create(Settings(data_dir=tmp_path))
    warmed = runtime.warm_up(["thyroid-malignancy"])
    assert [m.manifest.id for m in warmed] == [CLASSIFIER]
    classifier = warmed[0]
    assert set(classifier.requirements) == {SEGMENTER}
    segmenter = classifier.required(SEGMENTER)
    assert segmenter.warmup_seconds > 0
    assert {m.manifest.id for m in runtime.loaded} >= {CLASSIFIER, SEGMENTER}
    assert runtime.model(SEGMENTER) is segmenter  # loaded once, shared
