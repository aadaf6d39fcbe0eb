"""The blob store: inputs and artifacts by key, e.g. `jobs/<id>/inputs/00000.dcm`.

Embedded mode and single-host Celery use a folder; several hosts share it as a mounted volume, or use an
S3-compatible object store (app/storage/s3.py, MEDIMG_BLOB_URL=s3://bucket/prefix).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import BinaryIO, Protocol


PRIVATE_FILE = 0o600  # inputs and results are patient data: the service user's alone


class BlobNotFound(KeyError):
    pass


class BlobStore(Protocol):
    def put_file(self, key: str, source: Path) -> int: ...
    def put_bytes(self, key: str, data: bytes) -> int: ...
    def open(self, key: str) -> BinaryIO: ...
    def local_path(self, key: str) -> Path:
        """A local file with the blob's bytes: the blob itself, or (remote stores) a cached copy."""

    def release_local(self, prefix: str) -> None:
        """Drops local copies made by `local_path` under `prefix`; the stored blobs stay."""

    def delete_prefix(self, prefix: str) -> None: ...
    def exists(self, key: str) -> bool: ...


class FilesystemBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        # Lexical, as the S3 store's check: keys are the service's own and the store holds no symlinks, so
        # resolving every component on disk (a system call each, per blob access) would add nothing.
        path = Path(os.path.normpath(self.root / key))
        if not path.is_relative_to(self.root) or path == self.root:
            raise ValueError(f"blob key {key!r} escapes the store")
        return path

    def put_file(self, key: str, source: Path) -> int:
        """Moves `source` in (a rename when on the same file system) and returns its size."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        size = source.stat().st_size
        shutil.move(source, target)
        os.chmod(target, PRIVATE_FILE)
        return size

    def put_bytes(self, key: str, data: bytes) -> int:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a reader never sees half an artifact.
        partial = target.with_name(f".tmp-{uuid.uuid4().hex}")
        try:
            partial.touch(mode=PRIVATE_FILE)
            partial.write_bytes(data)
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return len(data)

    def open(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except FileNotFoundError:
            raise BlobNotFound(key) from None

    def local_path(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise BlobNotFound(key)
        return path

    def release_local(self, prefix: str) -> None:
        pass  # local_path is the blob itself

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix.rstrip("/")), ignore_errors=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}"
