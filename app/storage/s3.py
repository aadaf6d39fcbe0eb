"""The blob store on S3 or any S3-compatible object store (MinIO, Ceph RGW), for gateways and workers on many hosts.

Configured by URL: MEDIMG_BLOB_URL=s3://bucket/prefix, with MEDIMG_S3_ENDPOINT_URL for a non-AWS endpoint and
credentials from MEDIMG_S3_ACCESS_KEY_ID / MEDIMG_S3_SECRET_ACCESS_KEY or, when unset, the usual AWS chain
(environment, shared config, instance or pod role). Keys are the same as the filesystem store's
(`jobs/<id>/inputs/00000.dcm`); `local_path` downloads to a cache under MEDIMG_DATA_DIR/blob-cache, which the
runner releases when a job ends.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import urlparse

from app.storage.blobs import BlobNotFound

if TYPE_CHECKING:
    from app.config import Settings

MISSING_CODES = {"404", "NoSuchKey", "NotFound"}
DELETE_BATCH = 1000  # the most DeleteObjects takes at once


def import_boto3() -> ModuleType:
    """The one door to boto3, which only the S3 blob store needs."""
    try:
        return importlib.import_module("boto3")
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            "MEDIMG_BLOB_URL=s3://... needs boto3: install medimg with the s3 extra (`pip install medimg[s3]`)"
        ) from exc


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"blob key {key!r} escapes the store")
    return key


class S3BlobStore:
    def __init__(self, client, bucket: str, prefix: str, cache_dir: Path) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.cache_dir = cache_dir.resolve()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._missing = tuple(
            getattr(client.exceptions, name) for name in ("NoSuchKey",) if hasattr(client.exceptions, name)
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> S3BlobStore:
        parsed = urlparse(settings.blob_url or "")
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"MEDIMG_BLOB_URL={settings.blob_url!r} is not s3://bucket[/prefix]")
        boto3 = import_boto3()
        from botocore.config import Config

        config = Config(
            retries={"max_attempts": 5, "mode": "standard"},
            max_pool_connections=32,
            # Path-style requests reach a private endpoint by its host name, without bucket subdomains in DNS.
            s3={"addressing_style": "path"} if settings.s3_endpoint_url else None,
        )
        secret = settings.s3_secret_access_key.get_secret_value() if settings.s3_secret_access_key else None
        # A session per store: boto3's default session is not thread-safe, clients made from one are.
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=secret,
            config=config,
        )
        return cls(client, parsed.netloc, parsed.path, settings.blob_cache_dir)

    def _object_key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _is_missing(self, exc: Exception) -> bool:
        if self._missing and isinstance(exc, self._missing):
            return True
        error = getattr(exc, "response", {}).get("Error", {})
        return str(error.get("Code")) in MISSING_CODES

    def put_file(self, key: str, source: Path) -> int:
        """Uploads `source` (multipart when large) and removes it, as the filesystem store's move does."""
        size = source.stat().st_size
        self.client.upload_file(str(source), self.bucket, self._object_key(key))
        source.unlink()
        return size

    def put_bytes(self, key: str, data: bytes) -> int:
        # One PUT: readers see the old object or the new one, never half of it.
        self.client.put_object(Bucket=self.bucket, Key=self._object_key(key), Body=data)
        return len(data)

    def open(self, key: str) -> BinaryIO:
        """A streaming reader over the object (read(n), iter_chunks(), close()); nothing is buffered whole."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._object_key(key))
        except Exception as exc:
            if self._is_missing(exc):
                raise BlobNotFound(key) from None
            raise
        return response["Body"]

    def local_path(self, key: str) -> Path:
        """Downloads the object once per version (ETag) into the cache and returns the copy."""
        object_key = self._object_key(key)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=object_key)
        except Exception as exc:
            if self._is_missing(exc):
                raise BlobNotFound(key) from None
            raise
        etag = head["ETag"].strip('"') or "unversioned"
        target = self.cache_dir / key / etag / Path(key).name
        if target.is_file() and target.stat().st_size == head["ContentLength"]:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".download-")
        os.close(fd)
        try:
            self.client.download_file(self.bucket, object_key, tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def release_local(self, prefix: str) -> None:
        shutil.rmtree(self.cache_dir / _check_key(prefix.rstrip("/")), ignore_errors=True)

    def delete_prefix(self, prefix: str) -> None:
        """Deletes every object under `prefix/` (a folder in the filesystem store's terms)."""
        folder = self._object_key(prefix.rstrip("/")) + "/"
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=folder):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            for start in range(0, len(keys), DELETE_BATCH):
                self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": keys[start:start + DELETE_BATCH], "Quiet": True}
                )
        self.release_local(prefix)

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._object_key(key))
        except Exception as exc:
            if self._is_missing(exc):
                return False
            raise
        return True
