"""Job-finished callbacks: signed (Standard Webhooks), retried, and only to allowed destinations."""

from __future__ import annotations

import socket as socket_module
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from standardwebhooks import Webhook

from app.errors import InvalidRequest
from app.webhooks import check_callback_url
from tests.app.security.test_access import wait_job_as
from devkit.api import wait_job
from tests.utils.keys import auth, keys_env
from devkit.fundus import make_fundus, png_bytes
from devkit.services import Service, service_env

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


def _post(service: Service, callback_url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{service.url}/v1/jobs", data={"task": "dr-grading", "callback_url": callback_url},
                      files=[("files", ("a.png", png_bytes(make_fundus(2).rgb)))], headers=headers, timeout=30)


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
                                 "http://user:pw@127.0.0.1/x", "http://[fe80::1]/x",
                                 "http://[::ffff:169.254.169.254]/latest/meta-data/"])
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


@pytest.mark.parametrize("url, networks", [
    ("http://[::ffff:169.254.169.254]/latest/meta-data/", ["::/0"]),  # IPv4-mapped metadata, IPv6 allowed
    ("http://[::ffff:10.1.2.3]/x", ["::/0"]),  # allowed as IPv6, but leads to a private IPv4 not listed
    ("http://[::127.0.0.1]/x", []),  # IPv4-compatible loopback
    ("http://[64:ff9b::a9fe:a9fe]/x", []),  # NAT64 to the metadata address
    ("http://[2002:a9fe:a9fe::]/x", []),  # 6to4 from the metadata address
    ("http://[2001:0:4136:e378:8000:63bf:5601:5656]/x", ["::/0"]),  # Teredo to 169.254.169.169 (inverted)
])
def test_check_callback_url_judges_embedded_ipv4(url: str, networks: list[str]) -> None:
    with pytest.raises(InvalidRequest, match="IPv4"):
        check_callback_url(url, networks)


def test_delivery_connects_to_the_checked_address(monkeypatch, receiver: Receiver) -> None:
    """DNS rebinding: the name resolves to an allowed address once, elsewhere after; the POST goes to the first."""
    import socket

    from app.config import Settings
    from workers.webhooks import post_pinned

    real_getaddrinfo = socket.getaddrinfo
    answers = iter(["127.0.0.1"] + ["169.254.169.254"] * 10)
    lookups = []

    def rebinding(host, port, *args, **kwargs):
        if host != "hooks.rebind.test":
            return real_getaddrinfo(host, port, *args, **kwargs)
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    port = receiver.server.server_address[1]
    settings = Settings(webhook_allowed_networks=["127.0.0.0/8"])
    response = post_pinned(f"http://hooks.rebind.test:{port}/hooks/medimg", "{}", {"webhook-id": "m1"}, settings)
    assert response.status_code == 503  # the receiver's first answer: it was reached
    assert lookups == ["hooks.rebind.test"]  # resolved once, by the check
    headers, _ = receiver.deliveries[0]
    assert headers["host"] == f"hooks.rebind.test:{port}"


class Blackhole:
    """Accepts connections into its backlog and never answers: a dead callback that times out."""

    def __init__(self) -> None:
        self.sock = socket_module.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/dead"


@pytest.fixture(scope="module")
def tenants_service(tmp_path_factory) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("webhook-tenants")
    service = Service(data_dir, service_env(data_dir, MEDIMG_WEBHOOK_SECRET=SECRET, MEDIMG_API_KEYS=keys_env(),
                                            MEDIMG_WEBHOOK_ALLOWED_NETWORKS='["127.0.0.0/8"]'))
    service.start_gateway()
    yield service
    service.stop()


def test_dead_callback_of_one_tenant_does_not_delay_another(tenants_service: Service, receiver: Receiver) -> None:
    dead = Blackhole()
    try:
        for _ in range(3):  # each attempt hangs until the 10 s timeout, then is retried
            response = _post(tenants_service, dead.url, auth("clinic-a"))
            assert response.status_code == 202, response.text
        time.sleep(1.0)  # clinic-a's deliveries are under way
        response = _post(tenants_service, receiver.url, auth("clinic-b"))
        assert response.status_code == 202, response.text
        job = wait_job_as(tenants_service, response.json()["id"], "clinic-b")
        finished = time.monotonic()
        while not receiver.deliveries and time.monotonic() - finished < 15:
            time.sleep(0.05)
        assert receiver.deliveries, "clinic-b's webhook never came"
        # Before: two shared threads, both stuck on clinic-a's dead callback for 10 s and more.
        assert time.monotonic() - finished < 6, time.monotonic() - finished
        assert job["status"] == "succeeded"
    finally:
        dead.sock.close()
