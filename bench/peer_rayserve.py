"""Peer 2: the same DR ONNX model served by Ray Serve, `@serve.batch` on, one replica per worker (see
bench/peer_grader.py). Serves until killed.

    python -m bench.peer_rayserve MODEL_DIR PORT WORKERS MAX_BATCH BATCH_TIMEOUT_S
"""

from __future__ import annotations

import base64
import os
import sys
import threading
from pathlib import Path

import numpy as np
import ray
from ray import serve
from starlette.requests import Request

from bench.peer_grader import PeerGrader, respond


@serve.deployment(ray_actor_options={"num_cpus": 0})  # the replicas share the cores, as the other rows' workers do
class DRGrading:
    def __init__(self, model_dir: str, max_batch: int, timeout: float) -> None:
        self.grader = PeerGrader(Path(model_dir))
        self.grade_batch = serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=timeout)(self._grade_batch)

    async def _grade_batch(self, prepared: list[tuple[np.ndarray, np.ndarray, bool]]) -> list[dict]:
        logits = self.grader.logits(np.stack([tensor for _, tensor, _ in prepared]))
        return [respond(row, graded, gradable) for row, (graded, _, gradable) in zip(logits, prepared, strict=True)]

    async def __call__(self, request: Request) -> dict:
        payload = await request.json()
        return await self.grade_batch(self.grader.prepare(base64.b64decode(payload["image"])))


if __name__ == "__main__":
    model_dir, port, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    max_batch, timeout = int(sys.argv[4]), float(sys.argv[5])
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, runtime_env={"working_dir": None},
             log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(DRGrading.options(num_replicas=workers).bind(model_dir, max_batch, timeout), route_prefix="/predict")
    threading.Event().wait()
