"""The model repository: models/<model-id>/<version>/{model.onnx, manifest.json, CARD.md}.

Like Triton's repository, the highest version of each model is served unless one is pinned. Reading
the repository needs no ONNX Runtime, so the gateway uses this module to check inputs at the door.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from pydantic import ValidationError

from app.errors import ModelNotFound, TaskNotServed
from app.schemas.manifest import ModelManifest
from app.schemas.site import SiteConfig
from app.schemas.tasks import TaskName

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
CARD_FILE = "CARD.md"


class ModelRepositoryError(Exception):
    pass


@dataclass(frozen=True)
class ModelVersion:
    manifest: ModelManifest
    directory: Path

    @property
    def onnx_path(self) -> Path:
        return self.directory / MODEL_FILE

    @property
    def card_path(self) -> Path:
        return self.directory / CARD_FILE


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_model_version(directory: Path) -> ModelVersion:
    """Read and check one <model-id>/<version> folder; the sha256 in the manifest must match the file."""
    manifest_path = directory / MANIFEST_FILE
    try:
        manifest = ModelManifest.model_validate_json(manifest_path.read_bytes())
    except (OSError, ValidationError) as exc:
        raise ModelRepositoryError(f"{manifest_path}: {exc}") from exc
    if manifest.id != directory.parent.name or str(manifest.version) != directory.name:
        raise ModelRepositoryError(
            f"{manifest_path}: id/version {manifest.id}/{manifest.version} do not match the folder "
            f"{directory.parent.name}/{directory.name}"
        )
    onnx_path = directory / MODEL_FILE
    if not onnx_path.is_file():
        raise ModelRepositoryError(f"{onnx_path} is missing")
    actual = file_sha256(onnx_path)
    if actual != manifest.sha256:
        raise ModelRepositoryError(f"{onnx_path}: sha256 {actual} does not match the manifest's {manifest.sha256}")
    return ModelVersion(manifest=manifest, directory=directory)


class ModelRepository:
    """The served version of every model in the repository, and which model serves each task."""

    def __init__(
        self,
        root: Path,
        pinned_versions: dict[str, int] | None = None,
        task_models: dict[str, str] | None = None,
        site_config: SiteConfig | None = None,
    ) -> None:
        self.root = root
        self.errors: dict[str, str] = {}
        self.models: dict[str, ModelVersion] = {}
        pinned_versions = pinned_versions or {}
        for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
            versions = sorted(int(v.name) for v in model_dir.iterdir() if v.is_dir() and v.name.isdigit())
            if not versions:
                continue
            wanted = pinned_versions.get(model_dir.name, versions[-1])
            try:
                version = load_model_version(model_dir / str(wanted))
                if site_config is not None:
                    version = replace(version, manifest=site_config.apply(version.manifest))
                self.models[model_dir.name] = version
            except ModelRepositoryError as exc:
                # One broken model must not take the others down; it is reported by /readyz and /v1/models.
                self.errors[model_dir.name] = str(exc)
                log.error("model %s/%s not loaded: %s", model_dir.name, wanted, exc)
        for model_id, model in list(self.models.items()):
            missing = [r for r in model.manifest.requires if r not in self.models]
            if missing:
                self.errors[model_id] = f"requires model(s) {missing}, which are not loaded"
                log.error("model %s not served: it requires %s, which are not loaded", model_id, missing)
                del self.models[model_id]
        # A model another one requires is a stage of that model's pipeline, not a task's model of its own.
        dependencies = {r for model in self.models.values() for r in model.manifest.requires}
        self._by_task: dict[TaskName, ModelVersion] = {}
        task_models = task_models or {}
        for model in self.models.values():
            if model.manifest.id in dependencies:
                continue
            task = model.manifest.task
            chosen = task_models.get(task.value)
            if chosen is not None and chosen != model.manifest.id:
                continue
            if task in self._by_task and chosen is None:
                log.warning("several models serve %s; using %s (pin one with MEDIMG_TASK_MODELS)", task,
                            self._by_task[task].manifest.id)
                continue
            self._by_task[task] = model

    def for_task(self, task: TaskName) -> ModelVersion:
        try:
            return self._by_task[task]
        except KeyError:
            raise TaskNotServed(
                f"This deployment serves no model for task {task.value!r}; tasks served here: "
                f"{', '.join(sorted(t.value for t in self._by_task)) or 'none'} (GET /v1/models lists them)"
            ) from None

    def get(self, model_id: str) -> ModelVersion:
        try:
            return self.models[model_id]
        except KeyError:
            raise ModelNotFound(f"No model {model_id!r} is loaded; GET /v1/models lists the served models") from None

    def served(self) -> list[ModelVersion]:
        return list(self._by_task.values())
