"""Build stored jobs directly, for tests of the runner and the stores."""

from __future__ import annotations

import uuid
from pathlib import Path

from app.config import Settings
from app.model_repository import ModelRepository
from app.schemas.jobs import InputFile, Job, ModelRef
from app.schemas.tasks import TaskName
from app.storage.blobs import BlobStore, job_prefix
from devkit.reference_models import MODELS_DIR


def make_settings(data_dir: Path, **overrides) -> Settings:
    return Settings(data_dir=data_dir, model_repository=MODELS_DIR, **overrides)


def stored_dr_job(blobs: BlobStore, repository: ModelRepository, png: bytes, **fields) -> Job:
    manifest = repository.for_task(TaskName.DR_GRADING).manifest
    job_id = str(uuid.uuid4())
    key = f"{job_prefix(job_id)}/inputs/00000.png"
    size = blobs.put_bytes(key, png)
    return Job(
        id=job_id,
        task=TaskName.DR_GRADING,
        model=ModelRef(id=manifest.id, version=manifest.version, sha256=manifest.sha256, research_use_only=True),
        inputs=[InputFile(key=key, format="png", size_bytes=size)],
        **fields,
    )
