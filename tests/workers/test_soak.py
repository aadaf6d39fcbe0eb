"""Soak: several hundred jobs through repeated whole-worker kills and a broker outage; every job succeeds, and
no outcome is recorded twice. `make soak` runs it (CI too, from .ci/run); `make test` skips it (minutes long).

Jobs arrive in batches while workers are killed between them (a DR job takes tens of milliseconds now, so a
backlog queued up front would be gone before the second kill). The fault tests' short time limits keep the
Redis visibility timeout at 10 s: a message a killed worker had received but not yet started is only known
to Redis's unacked hash until then, or until the gateway's lost-message check resends the job, still queued
(a started job comes back through the heartbeat sweep).
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from devkit.api import submit_job
from devkit.fundus import make_fundus, png_bytes
from devkit.services import RedisServer, RestartPolicy, Service, service_env
from tests.workers.test_faults import FAST_LIMITS, _assert_all_done_once, _assert_counts_drained

pytestmark = pytest.mark.skipif(not os.environ.get("MEDIMG_SOAK"), reason="`make soak` runs this (minutes long)")
BATCHES, BATCH_SIZE = 15, 20  # 300 jobs
OUTAGE_AFTER_BATCH = 5


def _submit(service: Service, photo: bytes, timeout: float = 60) -> str:
    """Submits, retrying while the gateway answers 503 (its Redis restarting)."""
    deadline = time.monotonic() + timeout
    while True:
        response = submit_job(service, "dr-grading", [("eye.png", photo)])
        if response.status_code == 202:
            return response.json()["id"]
        assert response.status_code == 503 and time.monotonic() < deadline, response.text
        time.sleep(0.5)


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_soak_kills_and_broker_outage_every_job_succeeds_once(broker: str, tmp_path: Path, request) -> None:
    server = RedisServer(tmp_path / "redis").start()
    env = service_env(tmp_path / "data", server.url, **FAST_LIMITS)
    vhost = None
    if broker == "rabbitmq":
        vhost = request.getfixturevalue("rabbitmq_vhost")
        env["MEDIMG_BROKER_URL"] = vhost.url
    service = Service(tmp_path / "data", env)
    rng = random.Random(17)
    photos = [png_bytes(make_fundus(seed, size=320).rgb) for seed in range(5)]
    try:
        for _ in range(3):
            service.start_worker(queues="dr-grading", concurrency=2)
        service.start_gateway()
        with RestartPolicy(service.workers) as orchestrator:
            ids, kills = [], 0
            for batch in range(BATCHES):
                ids += [_submit(service, photos[i % len(photos)]) for i in range(BATCH_SIZE)]
                victim = rng.choice([w for w in service.workers if w.process is not None])
                victim.stop(signal.SIGKILL)  # the whole process group, as a container kill
                kills += 1
                service.start_worker(queues="dr-grading", concurrency=2)
                if batch == OUTAGE_AFTER_BATCH:
                    if vhost is None:
                        server.stop()  # the broker and the job store at once; persistence on (appendonly)
                        server.start()
                    else:
                        vhost.close_connections()  # every client connection of this run's vhost drops
            _assert_all_done_once(service, ids)
            _assert_counts_drained(server)
        print(f"{broker}: {len(ids)} jobs, {kills} whole-worker kills and a broker outage: all succeeded once; "
              f"{orchestrator.restarts} worker exits restarted by the restart policy")
    finally:
        service.stop()
        server.stop()
