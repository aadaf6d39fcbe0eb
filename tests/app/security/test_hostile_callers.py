"""A hostile caller costs the service nothing before it is known, and cannot hold a connection with a slow body."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from app.security.keys import hash_key
from tests.utils.footprint import files_held, footprint
from tests.utils.keys import auth, keys_env
from devkit.services import Service, service_env

FLOODER = "mk_test_flooder_0123456789abcdef"
DEADLINE = 4  # MEDIMG_BODY_DEADLINE_SECONDS: short, so a steady trickle meets it within a test


@pytest.fixture(scope="module")
def strict_service(tmp_path_factory) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("strict")
    temp_dir = data_dir.parent / f"{data_dir.name}-tmp"
    temp_dir.mkdir()
    keys = json.loads(keys_env()) + [{"name": "flooder", "sha256": hash_key(FLOODER), "scopes": ["submit", "read"]}]
    service = Service(data_dir, service_env(
        data_dir, MEDIMG_API_KEYS=json.dumps(keys), MEDIMG_RATE_LIMIT_PER_MINUTE="20",
        MEDIMG_UNAUTHENTICATED_RATE_LIMIT_PER_MINUTE="5", MEDIMG_BODY_READ_TIMEOUT_SECONDS="2",
        MEDIMG_BODY_MIN_BYTES_PER_SECOND="1000", MEDIMG_BODY_DEADLINE_SECONDS=str(DEADLINE), TMPDIR=str(temp_dir)))
    service.temp_dir = temp_dir
    service.start_gateway()
    yield service
    assert service.gateway.process.poll() is None
    service.stop()


def _upload_head(service: Service, headers: dict[str, str]) -> bytes:
    lines = ["POST /v1/jobs HTTP/1.1", f"Host: 127.0.0.1:{service.port}",
             "Content-Type: multipart/form-data; boundary=b0undary", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _answer(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and answer.rstrip().endswith(b"}"):
                break
    except (TimeoutError, ConnectionResetError):
        pass
    return answer


def _streamed_upload(service: Service, headers: dict[str, str], body_bytes: int) -> tuple[bytes, float]:
    """Sends the head of a chunked upload, then up to `body_bytes` of body while the answer is awaited."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(_upload_head(service, headers | {"Transfer-Encoding": "chunked"}))
        started = time.monotonic()

        def stream() -> None:
            chunk = b"%x\r\n%s\r\n" % (1 << 20, b"\0" * (1 << 20))
            try:
                for _ in range(body_bytes >> 20):
                    sock.sendall(chunk)
            except OSError:
                pass  # the service closed the connection: what we want

        sender = threading.Thread(target=stream, daemon=True)
        sender.start()
        answer = _answer(sock, 10)
        elapsed = time.monotonic() - started
        with contextlib.suppress(OSError):  # already closed by the service
            sock.shutdown(socket.SHUT_RDWR)
        sender.join(10)
    return answer, elapsed


@pytest.mark.parametrize("who", ["no key", "rate-limited key"])
def test_create_job_refused_before_body_is_read(strict_service: Service, who: str) -> None:
    if who == "no key":
        headers, expected = {}, b"HTTP/1.1 401"
    else:
        headers, expected = {"Authorization": f"Bearer {FLOODER}"}, b"HTTP/1.1 429"
        while httpx.get(f"{strict_service.url}/v1/models", headers=headers).status_code != 429:
            pass
    with footprint(strict_service.gateway.process.pid, [strict_service.data_dir, strict_service.temp_dir]) as cost:
        answer, elapsed = _streamed_upload(strict_service, headers, body_bytes=64 << 20)
    assert answer.startswith(expected), answer[:300]
    assert b"connection: close" in answer.lower()
    assert elapsed < 5, elapsed  # before: the body was read to its end (or the 10 s read timeout)
    # Before: the whole body was spooled to a temp file, then answered 413 (never 401).
    assert cost.peak_disk_bytes < 1 << 20, cost
    assert cost.rss_growth_mb < 32, cost


UPLOADS = {"/v1/jobs": "multipart/form-data; boundary=b0undary",
           "/dicomweb/studies?task=dr-grading": 'multipart/related; type="application/dicom"; boundary=b0undary'}
REFUSED_CALLERS = {"no key": ({}, 401), "wrong key": ({"X-API-Key": "mk_test_guessed_0123456789abcdef"}, 401),
                   "read-only key": (auth("viewer"), 403)}


def _declared_body_only(service: Service, path: str, headers: dict[str, str], source: str) -> tuple[bytes, float]:
    """Sends a request head declaring 256 MB of body, and none of it; returns the answer and how long it took."""
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{service.port}", f"Content-Type: {UPLOADS[path]}",
             f"Content-Length: {256 << 20}", *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection(("127.0.0.1", service.port), timeout=10, source_address=(source, 0)) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        started = time.monotonic()
        answer = _answer(sock, 5)
        return answer, time.monotonic() - started


@pytest.mark.parametrize("path", list(UPLOADS))
@pytest.mark.parametrize("who", list(REFUSED_CALLERS))
def test_refusal_answers_a_declared_body_at_once(strict_service: Service, path: str, who: str) -> None:
    headers, status = REFUSED_CALLERS[who]
    # A loopback address of its own per case: the unauthenticated budget (5 a minute) is counted per address.
    source = f"127.0.0.{10 + 10 * list(UPLOADS).index(path) + list(REFUSED_CALLERS).index(who)}"
    before = _files_held(strict_service)
    answer, elapsed = _declared_body_only(strict_service, path, headers, source)
    problem = _problem(answer, status)
    assert elapsed < 1, elapsed  # had the body been awaited: a 408 after the 2 s pause limit (the test below)
    assert b"connection: close" in answer.lower()
    assert ("API key" in problem["detail"]) if status == 401 else ("lacks the 'submit' scope" in problem["detail"])
    assert _files_held(strict_service) == before


def test_declared_body_awaited_for_a_known_caller(strict_service: Service) -> None:
    """The control of the test above: the same head with a key allowed to submit waits for the body."""
    answer, elapsed = _declared_body_only(strict_service, "/v1/jobs", auth("clinic-a"), "127.0.0.30")
    assert "MEDIMG_BODY_READ_TIMEOUT_SECONDS" in _problem(answer, 408)["detail"]
    assert elapsed > 1.5, elapsed


def test_requests_without_key_throttled_per_address(strict_service: Service) -> None:
    statuses = [httpx.get(f"{strict_service.url}/v1/jobs/x", headers={"X-API-Key": "guess"}).status_code
                for _ in range(8)]
    assert statuses[0] in (401, 429) and statuses[-1] == 429, statuses
    response = httpx.get(f"{strict_service.url}/v1/jobs/x")
    assert response.status_code == 429 and int(response.headers["retry-after"]) >= 1
    assert "MEDIMG_UNAUTHENTICATED_RATE_LIMIT_PER_MINUTE" in response.json()["detail"]
    # A caller with a key is not held back by the address's failures.
    assert httpx.get(f"{strict_service.url}/v1/models", headers=auth("viewer")).status_code == 200


def test_audit_line_bounded(strict_service: Service) -> None:
    long_id = "j" * 20_000
    response = httpx.get(f"{strict_service.url}/v1/jobs/{long_id}", headers=auth("clinic-a"))
    assert response.status_code == 404
    deadline = time.monotonic() + 5
    while True:  # the audit line is written once the answer has gone out
        lines = [line for line in strict_service.gateway.log_path.read_text().splitlines() if '"audit"' in line]
        mine = [line for line in lines if '"jjjj' in line]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert mine and all(len(line) < 1000 for line in mine), max(map(len, mine or [""]))


def _files_held(service: Service) -> set:
    return files_held([service.data_dir, service.temp_dir])


def _trickle(service: Service, chunk: bytes, interval: float, give_up: float) -> tuple[bytes, float]:
    """Sends an upload's head, then `chunk` every `interval` seconds until the service answers."""
    head = _upload_head(service, auth("clinic-a") | {"Content-Length": str(10 << 20)}) + (
        b'--b0undary\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n')
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(head)
        started = time.monotonic()
        answer = b""
        sock.settimeout(interval)
        while time.monotonic() - started < give_up and not answer:
            try:
                sock.sendall(chunk)
                answer = sock.recv(65536)  # waits `interval`: the pace of the trickle
            except TimeoutError:
                continue
            except OSError:
                break
        elapsed = time.monotonic() - started
        if answer and not answer.rstrip().endswith(b"}"):
            answer += _answer(sock, 2)  # the problem's body may come in a segment of its own
    return answer, elapsed


def _problem(answer: bytes, status: int) -> dict:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d" % status), answer[:300]
    assert b"content-type: application/problem+json" in head.lower(), head
    return json.loads(body)


def test_trickled_body_cut_by_minimum_pace(strict_service: Service) -> None:
    before = _files_held(strict_service)
    # One byte a second: never a pause long enough for the pause limit.
    answer, elapsed = _trickle(strict_service, b"x", interval=1.0, give_up=15)
    detail = _problem(answer, 408)["detail"]
    assert "average at least 1000 bytes/s (MEDIMG_BODY_MIN_BYTES_PER_SECOND)" in detail, detail
    assert elapsed < DEADLINE, elapsed  # before: held for as long as the caller liked
    assert _files_held(strict_service) == before


def test_steady_trickle_cut_at_the_body_deadline(strict_service: Service) -> None:
    before = _files_held(strict_service)
    # 8 kB/s: above the minimum pace (1,000 bytes/s), no pause near the pause limit, and 10 MB to come.
    answer, elapsed = _trickle(strict_service, b"x" * 2000, interval=0.25, give_up=3 * DEADLINE)
    detail = _problem(answer, 408)["detail"]
    assert f"must end within {DEADLINE} s (MEDIMG_BODY_DEADLINE_SECONDS)" in detail, detail
    assert DEADLINE - 0.5 < elapsed < DEADLINE + 2, elapsed
    assert _files_held(strict_service) == before
