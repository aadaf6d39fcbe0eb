"""Job-finished callbacks: signed (Standard Webhooks), retried, and only to allowed destinations."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from standardwebhooks import Webhook

from app.errors import InvalidRequest
from app.webhooks import check_callback_url
from tests.utils.api import wait_job
from tests.utils.fundus import make_fundus, png_bytes
from tests.utils.services import Service, service_env

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Receiver:
    """A real HTTP endpoint that fails the first delivery with 503, then accepts."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.deliveries.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(503 if len(receiver.deliveries) == 1 else 204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/medimg"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture(scope="module")
def webhook_service(tmp_path_factory) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("webhooks")
    service = Service(data_dir, service_env(data_dir, MEDIMG_WEBHOOK_SECRET=SECRET,
                                            MEDIMG_WEBHOOK_ALLOWED_NETWORKS='["127.0.0.0/8"]'))
    service.start_gateway()
    yield service
    service.stop()


def _post(service: Service, callback_url: str) -> httpx.Response:
    return httpx.post(f"{service.url}/v1/jobs", data={"task": "dr-grading", "callback_url": callback_url},
                      files=[("files", ("a.png", png_bytes(make_fundus(2).rgb)))], timeout=30)


def test_webhook_signed_and_retried(webhook_service: Service, receiver: Receiver) -> None:
    response = _post(webhook_service, receiver.url)
    assert response.status_code == 202, response.text
    job = wait_job(webhook_service, response.json()["id"])

    deadline = time.monotonic() + 20
    while len(receiver.deliveries) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(receiver.deliveries) == 2, "the first (503) delivery must be retried"
    first, second = receiver.deliveries
    assert first[0]["webhook-id"] == second[0]["webhook-id"]  # a retry is the same message
    headers, body = second
    payload = Webhook(SECRET).verify(body, headers)  # raises when the signature does not match
    assert payload["type"] == "job.succeeded"
    assert payload["data"]["id"] == job["id"] and payload["data"]["result"] == job["result"]
    with pytest.raises(Exception):
        Webhook("whsec_" + "A" * 32).verify(body, headers)


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data", "ftp://example.org/x",
                                 "http://user:pw@127.0.0.1/x", "http://[fe80::1]/x"])
def test_create_job_forbidden_callback_refused(webhook_service: Service, url: str) -> None:
    response = _post(webhook_service, url)
    assert response.status_code == 422
    assert "callback_url" in response.json()["detail"]


def test_check_callback_url_default_allows_public_only() -> None:
    with pytest.raises(InvalidRequest, match="127.0.0.1"):
        check_callback_url("http://127.0.0.1:9000/x", [])
    with pytest.raises(InvalidRequest, match="10.1.2.3"):
        check_callback_url("http://10.1.2.3/x", [])
    check_callback_url("https://93.184.215.14/hook", [])
    check_callback_url("http://10.1.2.3/x", ["10.0.0.0/8"])
    with pytest.raises(InvalidRequest):
        check_callback_url("http://169.254.169.254/x", ["0.0.0.0/0"])  # metadata stays refused
