"""The pipeline limit: the service's own DR pipeline (load → quality → preprocess → infer → decode → preview,
`workers.pipelines.dr_grading`) over the same uploads in a process pool sized to the cores, with no HTTP,
queue or storage around it. What the service keeps of this is what serving costs.

Each process holds one session on one intra-op thread (one process per core: no two runs compete for a
core), idle threads not spinning, as the service's sessions.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from app.model_repository import load_model_version
from app.schemas.options import DRGradingOptions
from bench.peer_grader import PROVIDERS
from workers.onnx import LoadedModel, load_model
from workers.pipelines.base import JobInput, StageTimer
from workers.pipelines.dr_grading import DRGradingPipeline

_model: LoadedModel | None = None  # one per pool process, loaded by its initializer
_options: DRGradingOptions | None = None


def _load(model_dir: str, options: dict) -> None:
    global _model, _options
    _model = load_model(load_model_version(Path(model_dir)), PROVIDERS, threads=1,
                        thread_spinning=False)
    _model.warm_up()
    _options = DRGradingOptions(**options)


def _grade(path: str) -> float:
    began = time.perf_counter()
    output = DRGradingPipeline().run([JobInput(Path(path), "png")], _options, _model, StageTimer())
    assert output.result is not None
    return time.perf_counter() - began


def configuration(options: dict) -> dict:
    return {"processes": os.cpu_count() or 1, "intra_op_threads": 1, "thread_spinning": False,
            "providers": PROVIDERS, "pipeline": "workers.pipelines.dr_grading.DRGradingPipeline", "options": options}


def pipeline_limit(model_dir: Path, uploads: list[tuple[str, bytes]], options: dict) -> tuple[float, list[float]]:
    """(jobs per second, per-job seconds) for the uploads graded by the pool, after one warm-up round."""
    processes = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as scratch:
        paths = []
        for index, (name, data) in enumerate(uploads):
            path = Path(scratch) / f"{index}-{name}"
            path.write_bytes(data)
            paths.append(str(path))
        # spawn: the parent may hold ONNX Runtime's thread pools, which a forked child must not inherit.
        with ProcessPoolExecutor(processes, multiprocessing.get_context("spawn"), initializer=_load,
                                 initargs=(str(model_dir), options)) as pool:
            list(pool.map(_grade, paths[: 2 * processes]))
            started = time.perf_counter()
            latencies = list(pool.map(_grade, paths))
            elapsed = time.perf_counter() - started
    return len(uploads) / elapsed, latencies
