"""Worker heartbeats in Redis: each warmed worker process refreshes a key naming the queues it consumes.

The gateway's /readyz reads them; unlike `celery inspect ping`, a busy worker still beats. The same thread
also touches a local file (MEDIMG_WORKER_HEARTBEAT_FILE), whose age container probes check with
`medimg worker-probe`: it is written only after warm-up, and keeps being written while Redis is down.
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


def beat(client: redis.Redis, queues: list[str], models: list[str], providers: list[str], ttl: float) -> None:
    key = f"{PREFIX}{socket.gethostname()}:{os.getpid()}"
    document = {"queues": queues, "models": models, "providers": providers}
    client.set(key, json.dumps(document), px=int(ttl * 1000))


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


def start_beating(client: redis.Redis, queues: list[str], models: list[str], providers: list[str],
                  interval: float, heartbeat_file: Path | None = None) -> threading.Event:
    """Beats every `interval` seconds from a daemon thread until the returned event is set."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            if heartbeat_file is not None:
                try:
                    touch_heartbeat_file(heartbeat_file)
                except OSError:
                    pass  # a full or read-only disk: the probe then fails, which is the signal we want
            try:
                beat(client, queues, models, providers, ttl=interval * 3)
            except redis.RedisError:
                pass  # Redis restarting: the next beat retries; readiness drops meanwhile, as it should
            stop.wait(interval)

    threading.Thread(target=loop, name="medimg-heartbeat", daemon=True).start()
    return stop
