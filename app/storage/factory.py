"""Builds the stores and the model repository the settings ask for; gateway and workers share this."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from app.config import Settings
from app.model_repository import ModelRepository
from app.schemas.site import load_site_config
from app.storage.blobs import BlobStore, FilesystemBlobStore
from app.storage.jobs import JobStore, RedisJobStore, SqliteJobStore


def make_job_store(settings: Settings) -> JobStore:
    if settings.redis_url:
        return RedisJobStore.from_url(settings.redis_url)
    return SqliteJobStore(settings.sqlite_path)


def make_blob_store(settings: Settings) -> BlobStore:
    """MEDIMG_BLOB_URL picks the store: s3://bucket/prefix, file:///path, or (unset) MEDIMG_DATA_DIR/blobs."""
    url = settings.blob_url
    if url and url.startswith("s3://"):
        from app.storage.s3 import S3BlobStore

        return S3BlobStore.from_settings(settings)
    if url and url.startswith("file://"):
        return FilesystemBlobStore(Path(unquote(urlparse(url).path)))
    return FilesystemBlobStore(settings.blob_dir)


def make_model_repository(settings: Settings) -> ModelRepository:
    return ModelRepository(settings.model_repository, settings.model_versions, settings.task_models,
                           load_site_config(settings.site_config))
