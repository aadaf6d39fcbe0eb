"""Real processes for tests: a private Redis, the gateway over HTTP, Celery workers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from devkit.reference_models import REPO_ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until(check, timeout: float, what: str, log_path: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    tail = log_path.read_text(errors="replace")[-3000:] if log_path and log_path.exists() else ""
    raise TimeoutError(f"{what} not ready after {timeout}s\n{tail}")


@dataclass
class RedisServer:
    """A private redis-server on a free port, so tests own its lifetime (and can restart it)."""

    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    external_url: str | None = None

    @property
    def url(self) -> str:
        return self.external_url or f"redis://127.0.0.1:{self.port}/0"

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    def start(self) -> RedisServer:
        if self.external_url:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        _wait_until(lambda: _pings(client), 15, "redis-server")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def start_redis(workdir: Path) -> RedisServer:
    if RedisServer.available():
        return RedisServer(workdir).start()
    # No server binary here: use the machine's Redis on a database of its own.
    url = os.environ.get("MEDIMG_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    redis.Redis.from_url(url).flushdb()
    return RedisServer(workdir, external_url=url)


@dataclass
class Process:
    args: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = None

    def start(self) -> Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                        cwd=REPO_ROOT, start_new_session=True)
        log.close()
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.process = None


class RestartPolicy:
    """What compose's `restart: unless-stopped` (and a Kubernetes Deployment) does for a worker container:
    start a worker again when its process exits on its own, whatever its exit code. Celery 5.x workers on a
    Redis broker can exit with "Unrecoverable error" when the broker restarts under them (a known Celery/kombu
    fault on reconnect); production relies on the orchestrator for that, so the fault tests do too, and count
    the restarts. (Until `medimg worker` kept Celery's exit code, such a worker exited 0, and a policy that
    restarted only failures left the jobs queued with no worker.)"""

    def __init__(self, workers: list[Process], interval: float = 0.5) -> None:
        self.workers, self.interval, self.restarts = workers, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="restart-policy", daemon=True)

    def __enter__(self) -> RestartPolicy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            for worker in self.workers:
                # A worker the test stopped has no process any more (Process.stop), so this is an exit of its own.
                if worker.process is not None and worker.process.poll() is not None:
                    self.restarts += 1
                    worker.start()


def service_env(data_dir: Path, redis_url: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIMG_")}
    env.update({"MEDIMG_DATA_DIR": str(data_dir), "MEDIMG_WORKER_HEARTBEAT_SECONDS": "1", "PYTHONUNBUFFERED": "1",
                # The session's shared services take thousands of requests from many tests: at the default
                # 600 a minute a fast machine met 429s mid-test. The limits have tests of their own, which set them.
                "MEDIMG_RATE_LIMIT_PER_MINUTE": "100000", "MEDIMG_UNAUTHENTICATED_RATE_LIMIT_PER_MINUTE": "100000"})
    if redis_url:
        env["MEDIMG_REDIS_URL"] = redis_url
    env.update(extra)
    return env


@dataclass
class Service:
    """The gateway over real HTTP, with its Celery workers when in Celery mode."""

    data_dir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    gateway: Process | None = None
    workers: list[Process] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_paths(self) -> list[Path]:
        return [p.log_path for p in [self.gateway, *self.workers] if p is not None]

    def start_gateway(self, timeout: float = 90, wait_ready: bool = True) -> None:
        self.gateway = Process(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)], self.env,
            self.data_dir / "logs" / "gateway.log",
        ).start()
        if wait_ready:
            self.wait_ready(timeout)
        else:
            self.wait_listening(timeout)

    def start_worker(self, queues: str | None = None, concurrency: int = 1, pool: str = "prefork") -> Process:
        args = [sys.executable, "-m", "app.cli", "worker", "--concurrency", str(concurrency), "--pool", pool]
        if queues:
            args += ["--queues", queues]
        worker = Process(args, self.env, self.data_dir / "logs" / f"worker-{len(self.workers)}.log").start()
        self.workers.append(worker)
        return worker

    def wait_listening(self, timeout: float = 90) -> None:
        self._wait_for_200("/healthz", timeout)

    def wait_ready(self, timeout: float = 90) -> None:
        self._wait_for_200("/readyz", timeout)

    def _wait_for_200(self, path: str, timeout: float) -> None:
        def answers() -> bool:
            try:
                return httpx.get(f"{self.url}{path}", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait_until(answers, timeout, f"gateway {path}", self.gateway.log_path if self.gateway else None)

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        for worker in self.workers:
            worker.stop()
        self.workers.clear()


@dataclass
class RabbitVhost:
    """A vhost of its own on the machine's shared RabbitMQ (guest/guest), deleted afterwards with its queues."""

    name: str = field(default_factory=lambda: f"medimg-test-{os.getpid()}-{time.monotonic_ns()}")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:5672/{self.name}"

    @staticmethod
    def available() -> bool:
        if shutil.which("rabbitmqctl") is None:
            return False
        with socket.socket() as sock:
            sock.settimeout(2)
            return sock.connect_ex(("127.0.0.1", 5672)) == 0

    def create(self) -> RabbitVhost:
        _rabbitmqctl("add_vhost", self.name)
        _rabbitmqctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        return self

    def close_connections(self) -> None:
        """Drops every client connection of this vhost, as a broker restart would (others' vhosts untouched)."""
        _rabbitmqctl("close_all_connections", "--vhost", self.name, "--limit", "1000", "medimg test: broker outage")

    def delete(self) -> None:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", self.name], capture_output=True, timeout=120)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)
