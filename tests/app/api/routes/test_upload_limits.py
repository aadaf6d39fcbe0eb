"""Uploads over MEDIMG_MAX_UPLOAD_BYTES get 413, declared or streamed; deeply nested options and an empty file
part get a problem; none of them leaves anything behind."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from devkit.fundus import make_fundus, png_bytes
from devkit.services import Service, service_env

LIMIT = 300_000


@pytest.fixture(scope="module")
def small_limit_service(tmp_path_factory) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("small-limit")
    service = Service(data_dir, service_env(data_dir, MEDIMG_MAX_UPLOAD_BYTES=str(LIMIT)))
    service.start_gateway()
    yield service
    service.stop()


def _leftovers(service: Service) -> list[str]:
    roots = [service.data_dir / "blobs", service.data_dir / "staging"]
    return [str(p) for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


def test_create_job_declared_too_large_refused(small_limit_service: Service) -> None:
    response = httpx.post(f"{small_limit_service.url}/v1/jobs", data={"task": "dr-grading"},
                          files=[("files", ("big.png", b"\x89PNG\r\n\x1a\n" + bytes(LIMIT)))])
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert "MEDIMG_MAX_UPLOAD_BYTES" in response.json()["detail"]
    assert _leftovers(small_limit_service) == []


def test_create_job_streamed_too_large_refused(small_limit_service: Service) -> None:
    boundary = "medimgtestboundary"

    def chunked_body() -> Iterator[bytes]:
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"task\"\r\n\r\ndr-grading\r\n"
               f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n"
               "Content-Type: image/png\r\n\r\n").encode()
        for _ in range(LIMIT // 10_000 + 5):
            yield bytes(10_000)
        yield f"\r\n--{boundary}--\r\n".encode()

    # A generator body goes out with chunked transfer encoding and no Content-Length.
    response = httpx.post(f"{small_limit_service.url}/v1/jobs", content=chunked_body(),
                          headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 413
    assert response.json()["code"] == "payload-too-large"
    assert _leftovers(small_limit_service) == []


def test_create_job_under_limit_accepted(small_limit_service: Service) -> None:
    fundus = make_fundus(seed=1, size=400)
    data = png_bytes(fundus.rgb)
    assert len(data) < LIMIT
    response = httpx.post(f"{small_limit_service.url}/v1/jobs", data={"task": "dr-grading"},
                          files=[("files", ("a.png", data))])
    assert response.status_code == 202, response.text


def test_deeply_nested_options_under_the_size_cap_are_a_422(small_limit_service: Service) -> None:
    # 3,000 levels fit well under the 16 kB options cap; a recursive reader would raise RecursionError (a 500).
    options = "[" * 3000 + "]" * 3000
    before = _leftovers(small_limit_service)
    response = httpx.post(f"{small_limit_service.url}/v1/jobs", data={"task": "dr-grading", "options": options},
                          files=[("files", ("eye.png", png_bytes(make_fundus(seed=2, size=200).rgb), "image/png"))], timeout=60)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert "options" in response.json()["detail"]
    assert _leftovers(small_limit_service) == before


def test_empty_file_part_is_a_problem_not_a_job(small_limit_service: Service) -> None:
    before = _leftovers(small_limit_service)
    response = httpx.post(f"{small_limit_service.url}/v1/jobs", data={"task": "dr-grading"},
                          files=[("files", ("empty.png", b"", "image/png"))], timeout=60)
    assert response.status_code == 415, response.text  # judged by content: no bytes are no known format
    assert response.headers["content-type"] == "application/problem+json"
    assert "file #1" in response.json()["detail"]
    assert _leftovers(small_limit_service) == before
