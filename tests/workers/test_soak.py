"""Soak: several hundred jobs through repeated whole-worker kills and a broker outage; every job succeeds, and
no outcome is recorded twice. `make soak` runs it (CI too, from .ci/run); `make test` skips it (minutes long).
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from tests.utils.services import RedisServer, Service, service_env
from tests.workers.test_faults import _assert_all_done_once, _assert_counts_drained, _finished, _submit_many

pytestmark = pytest.mark.skipif(not os.environ.get("MEDIMG_SOAK"), reason="`make soak` runs this (minutes long)")
JOBS = 300
KILL_EVERY_SECONDS = 8.0


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_soak_kills_and_broker_outage_every_job_succeeds_once(broker: str, tmp_path: Path, request) -> None:
    server = RedisServer(tmp_path / "redis").start()
    env = service_env(tmp_path / "data", server.url, MEDIMG_LOST_JOB_CHECK_SECONDS="2",
                      MEDIMG_LOST_JOB_GRACE_SECONDS="5")
    vhost = None
    if broker == "rabbitmq":
        vhost = request.getfixturevalue("rabbitmq_vhost")
        env["MEDIMG_BROKER_URL"] = vhost.url
    service = Service(tmp_path / "data", env)
    rng = random.Random(17)
    try:
        for _ in range(3):
            service.start_worker(queues="dr-grading", concurrency=2)
        service.start_gateway()
        ids = _submit_many(service, JOBS)
        kills, outage_done = 0, False
        deadline = time.monotonic() + 900
        while _finished(server, ids) < JOBS and time.monotonic() < deadline:
            time.sleep(KILL_EVERY_SECONDS)
            victim = rng.choice([w for w in service.workers if w.process is not None])
            victim.stop(signal.SIGKILL)  # the whole process group, as a container kill
            kills += 1
            service.start_worker(queues="dr-grading", concurrency=2)
            if not outage_done and _finished(server, ids) >= JOBS // 3:
                outage_done = True
                if vhost is None:
                    server.stop()  # the broker and the job store at once; persistence on (appendonly)
                    server.start()
                else:
                    vhost.close_connections()  # every client connection of this run's vhost drops
        assert outage_done and kills >= 3, (kills, outage_done)
        _assert_all_done_once(service, ids)
        _assert_counts_drained(server)
        print(f"{broker}: {JOBS} jobs, {kills} whole-worker kills and a broker outage: all succeeded once")
    finally:
        service.stop()
        server.stop()
