"""Worker heartbeats in Redis: each warmed worker process refreshes a key naming the queues it consumes.

The gateway's /readyz reads them; unlike `celery inspect ping`, a busy worker still beats.
"""

from __future__ import annotations

import json
import os
import socket
import threading

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


def start_beating(client: redis.Redis, queues: list[str], models: list[str], providers: list[str],
                  interval: float) -> threading.Event:
    """Beats every `interval` seconds from a daemon thread until the returned event is set."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                beat(client, queues, models, providers, ttl=interval * 3)
            except redis.RedisError:
                pass  # Redis restarting: the next beat retries; readiness drops meanwhile, as it should
            stop.wait(interval)

    threading.Thread(target=loop, name="medimg-heartbeat", daemon=True).start()
    return stop
