"""Worker heartbeats in Redis: each warmed worker process refreshes a key naming the queues it consumes.

The gateway's /readyz reads them; unlike `celery inspect ping`, a busy worker still beats. The same thread
also touches a local file (MEDIMG_WORKER_HEARTBEAT_FILE), whose age container probes check with
`medimg worker-probe`: it is written only after warm-up, and keeps being written while Redis is down.

Each beat also lists the jobs the process holds. A job records the worker process (`host:pid`) that started
it; while that worker's beat lists the job, another delivery of it stands down. Once the beat expires or
stops listing it (a killed container, a lost node, a job given back to the queue), the gateway's sweep sends
the job again: recovery in about a heartbeat TTL instead of the broker's visibility timeout.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import redis

PREFIX = "medimg:worker-heartbeat:"
TTL_BEATS = 3  # Settings.worker_heartbeat_ttl too: a beat lives this many intervals: one or two late beats on a loaded host are not a death


def worker_id() -> str:
    """This process, as jobs record their holder and as its heartbeat key names it: host, PID namespace, PID.
    The namespace tells apart containers that share a host name (host networking) and so reuse PIDs."""
    return f"{socket.gethostname()}:{_pid_namespace()}:{os.getpid()}"


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "-"


def beat(client: redis.Redis, document: dict, ttl: float, worker: str | None = None) -> None:
    client.set(f"{PREFIX}{worker or worker_id()}", json.dumps(document), px=int(ttl * 1000))


def holds(client: redis.Redis, worker: str, job_id: str) -> bool:
    """Whether `worker` is alive and still lists `job_id` among the jobs it runs."""
    host, namespace, pid = (worker.rsplit(":", 2) + ["", ""])[:3]
    if (host, namespace) == (socket.gethostname(), _pid_namespace()) and pid.isdigit() and not _process_exists(int(pid)):
        return False  # a sibling in this container (a killed pool process): no need to wait for its beat to expire
    raw = client.get(f"{PREFIX}{worker}")
    return raw is not None and job_id in json.loads(raw).get("jobs", [])


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_workers(client: redis.Redis) -> list[dict]:
    workers = []
    for key in client.scan_iter(match=f"{PREFIX}*", count=100):
        raw = client.get(key)
        if raw is not None:
            workers.append(json.loads(raw))
    return workers


def touch_heartbeat_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    os.utime(path)  # touch() leaves an existing file's time alone on some file systems


def heartbeat_age(path: Path) -> float | None:
    """Seconds since the file was last touched, or None when it does not exist."""
    try:
        return max(0.0, time.time() - path.stat().st_mtime)
    except FileNotFoundError:
        return None


class Heartbeat:
    """A warmed worker process's beat: what it serves (`/readyz`) and which jobs it holds (recovery)."""

    def __init__(self, client: redis.Redis, queues: list[str], models: list[str], providers: dict[str, list[str]],
                 interval: float, heartbeat_file: Path | None = None) -> None:
        self.client = client
        self.worker_id = worker_id()
        self._document = {"queues": queues, "models": models, "providers": providers}
        self._interval = interval
        self._file = heartbeat_file
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def hold(self, job_id: str) -> None:
        """Lists the job in this process's beat now, before the job store says this process runs it, so a
        racing delivery that reads the store afterwards sees the job held. Raises RedisError when Redis is down."""
        with self._lock:
            self._held.add(job_id)
        self._beat()

    def release(self, job_id: str) -> None:
        with self._lock:
            self._held.discard(job_id)

    def _beat(self) -> None:
        with self._lock:
            document = {**self._document, "jobs": sorted(self._held)}
        beat(self.client, document, ttl=self._interval * TTL_BEATS, worker=self.worker_id)

    def start(self) -> Heartbeat:
        """Beats every interval from a daemon thread until `stop()`."""
        threading.Thread(target=self._loop, name="medimg-heartbeat", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._file is not None:
                try:
                    touch_heartbeat_file(self._file)
                except OSError:
                    pass  # a full or read-only disk: the probe then fails, which is the signal we want
            try:
                self._beat()
            except redis.RedisError:
                pass  # Redis restarting: the next beat retries; readiness drops meanwhile, as it should
            self._stop.wait(self._interval)
