"""Both blob stores keep the same promises: the filesystem store, and the S3 store against moto's server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.config import Settings
from app.storage.blobs import BlobNotFound, BlobStore, FilesystemBlobStore
from app.storage.factory import make_blob_store
from app.storage.s3 import S3BlobStore
from tests.utils.s3 import MotoServer


@pytest.fixture(params=["filesystem", "s3"])
def store(request, tmp_path) -> Iterator[BlobStore]:
    if request.param == "filesystem":
        yield FilesystemBlobStore(tmp_path / "blobs")
        return
    moto: MotoServer = request.getfixturevalue("moto_server")
    bucket = moto.new_bucket()
    env = moto.settings_env(bucket, prefix="deploy/blobs")
    settings = Settings(data_dir=tmp_path / "data", **{k.removeprefix("MEDIMG_").lower(): v for k, v in env.items()})
    yield make_blob_store(settings)


def staged(tmp_path: Path, data: bytes, name: str = "upload.part") -> Path:
    path = tmp_path / "staging" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_put_bytes_and_open_roundtrip(store: BlobStore) -> None:
    assert store.put_bytes("jobs/a/artifacts/mask.png", b"\x89PNG mask") == 9
    with store.open("jobs/a/artifacts/mask.png") as reader:
        assert reader.read() == b"\x89PNG mask"
    assert store.exists("jobs/a/artifacts/mask.png")


def test_put_file_moves_source_in(store: BlobStore, tmp_path: Path) -> None:
    source = staged(tmp_path, b"DICM" * 1000)
    assert store.put_file("jobs/b/inputs/00000.dcm", source) == 4000
    assert not source.exists()
    assert store.local_path("jobs/b/inputs/00000.dcm").read_bytes() == b"DICM" * 1000


def test_put_file_large_streams_without_loss(store: BlobStore, tmp_path: Path) -> None:
    data = bytes(range(256)) * (40 * 1024 + 7)  # ~10 MiB: past boto3's multipart threshold of 8 MiB
    assert store.put_file("jobs/c/inputs/00000.dcm", staged(tmp_path, data)) == len(data)
    assert store.local_path("jobs/c/inputs/00000.dcm").read_bytes() == data


def test_local_path_sees_overwritten_blob(store: BlobStore) -> None:
    store.put_bytes("jobs/d/artifacts/report.json", b"first")
    assert store.local_path("jobs/d/artifacts/report.json").read_bytes() == b"first"
    store.put_bytes("jobs/d/artifacts/report.json", b"second version")
    assert store.local_path("jobs/d/artifacts/report.json").read_bytes() == b"second version"


def test_missing_blob_raises_blob_not_found(store: BlobStore) -> None:
    assert not store.exists("jobs/none/inputs/00000.dcm")
    with pytest.raises(BlobNotFound):
        store.open("jobs/none/inputs/00000.dcm")
    with pytest.raises(BlobNotFound):
        store.local_path("jobs/none/inputs/00000.dcm")


def test_delete_prefix_removes_that_job_only(store: BlobStore) -> None:
    for key in ("jobs/e/inputs/00000.dcm", "jobs/e/artifacts/mask.png", "jobs/ee/inputs/00000.dcm"):
        store.put_bytes(key, b"x")
    store.local_path("jobs/e/inputs/00000.dcm")
    store.delete_prefix("jobs/e")
    assert not store.exists("jobs/e/inputs/00000.dcm")
    assert not store.exists("jobs/e/artifacts/mask.png")
    assert store.exists("jobs/ee/inputs/00000.dcm")
    store.delete_prefix("jobs/never-existed")  # nothing to delete is not an error


def test_delete_prefix_of_inputs_keeps_artifacts(store: BlobStore) -> None:
    store.put_bytes("jobs/f/inputs/00000.dcm", b"in")
    store.put_bytes("jobs/f/artifacts/mask.png", b"out")
    store.delete_prefix("jobs/f/inputs")
    assert not store.exists("jobs/f/inputs/00000.dcm")
    assert store.exists("jobs/f/artifacts/mask.png")


def test_release_local_keeps_stored_blob(store: BlobStore) -> None:
    store.put_bytes("jobs/g/inputs/00000.png", b"png")
    store.local_path("jobs/g/inputs/00000.png")
    store.release_local("jobs/g")
    assert store.exists("jobs/g/inputs/00000.png")
    assert store.local_path("jobs/g/inputs/00000.png").read_bytes() == b"png"


@pytest.mark.parametrize("key", ["../outside", "jobs/../../etc/passwd", "/abs/key"])
def test_put_bytes_refuses_escaping_key(store: BlobStore, key: str) -> None:
    with pytest.raises(ValueError, match="escapes the store"):
        store.put_bytes(key, b"x")


def test_s3_store_writes_under_its_prefix(moto_server: MotoServer, tmp_path: Path) -> None:
    bucket = moto_server.new_bucket()
    settings = Settings(data_dir=tmp_path, blob_url=f"s3://{bucket}/tenant-a", s3_endpoint_url=moto_server.endpoint_url,
                        s3_region="us-east-1", s3_access_key_id="k", s3_secret_access_key="s")
    store = make_blob_store(settings)
    assert isinstance(store, S3BlobStore)
    store.put_bytes("jobs/h/inputs/00000.png", b"x")
    listed = moto_server.client().list_objects_v2(Bucket=bucket)["Contents"]
    assert [item["Key"] for item in listed] == ["tenant-a/jobs/h/inputs/00000.png"]


def test_make_blob_store_file_url(tmp_path: Path) -> None:
    store = make_blob_store(Settings(data_dir=tmp_path / "data", blob_url=f"file://{tmp_path}/shared%20blobs"))
    assert isinstance(store, FilesystemBlobStore) and store.root == (tmp_path / "shared blobs").resolve()


def test_settings_blob_url_unknown_scheme_refused() -> None:
    with pytest.raises(ValueError, match="MEDIMG_BLOB_URL"):
        Settings(blob_url="gs://bucket/x")
