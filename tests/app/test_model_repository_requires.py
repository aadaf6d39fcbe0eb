"""A model that only serves as a stage of another (manifest `requires`) does not serve the task itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from app.errors import TaskNotServed
from app.model_repository import ModelRepository
from app.schemas.tasks import TaskName
from devkit.reference_models import reference_model_dir

CLASSIFIER = "thyroid-malignancy-reference"
SEGMENTER = "thyroid-nodule-segmentation-reference"


def _copy_version(model_id: str, root: Path) -> Path:
    target = root / model_id / "1"
    shutil.copytree(reference_model_dir(model_id) / "1", target)
    return target


def test_required_model_is_loaded_but_does_not_serve_the_task(tmp_path: Path) -> None:
    _copy_version(CLASSIFIER, tmp_path)
    _copy_version(SEGMENTER, tmp_path)
    repository = ModelRepository(tmp_path)
    assert not repository.errors
    assert repository.for_task(TaskName.THYROID_MALIGNANCY).manifest.id == CLASSIFIER
    assert repository.get(SEGMENTER).manifest.requires == []
    assert [v.manifest.id for v in repository.served()] == [CLASSIFIER]


def test_model_whose_requirement_is_missing_is_not_served(tmp_path: Path) -> None:
    _copy_version(CLASSIFIER, tmp_path)
    repository = ModelRepository(tmp_path)
    assert SEGMENTER in repository.errors[CLASSIFIER]
    with pytest.raises(TaskNotServed):
        repository.for_task(TaskName.THYROID_MALIGNANCY)


def test_requirement_with_a_broken_manifest_takes_its_dependant_down(tmp_path: Path) -> None:
    _copy_version(CLASSIFIER, tmp_path)
    broken = _copy_version(SEGMENTER, tmp_path) / "manifest.json"
    raw = json.loads(broken.read_text())
    raw["sha256"] = "0" * 64
    broken.write_text(json.dumps(raw))
    repository = ModelRepository(tmp_path)
    assert SEGMENTER in repository.errors and CLASSIFIER in repository.errors
    assert repository.served() == []
