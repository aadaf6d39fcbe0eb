"""Micro-batching gives every job exactly the result it would get alone."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from app.config import Settings
from app.schemas.tasks import TaskName
from devkit.fundus import make_fundus
from tests.utils.jobs import make_settings
from tests.utils.onnx_models import fixed_box_detector, manifest_for, write_model_folder
from workers.batching import MicroBatcher, urgent_calls
from workers.imaging.fundus import preprocess_fundus
from workers.runtime import WorkerRuntime


@pytest.fixture(scope="module")
def dr_model(tmp_path_factory):
    runtime = WorkerRuntime.create(make_settings(tmp_path_factory.mktemp("batching"), batch_max_rows=8,
                                                 batch_max_wait_ms=20))
    return runtime.model(runtime.repository.for_task(TaskName.DR_GRADING).manifest.id)


def test_batched_results_equal_single_results(dr_model) -> None:
    manifest = dr_model.manifest
    tensors = [preprocess_fundus(make_fundus(seed).rgb, manifest.preprocessing)[np.newaxis] for seed in range(12)]
    name, output = manifest.inputs[0].name, manifest.outputs[0].name
    alone = [dr_model._run_batch({name: t})[output] for t in tensors]
    sizes: list[int] = []
    original = dr_model.batcher._run_batch

    def counting(feeds):
        sizes.append(next(iter(feeds.values())).shape[0])
        return original(feeds)

    dr_model.batcher._run_batch = counting
    try:
        with ThreadPoolExecutor(12) as pool:
            together = list(pool.map(lambda t: dr_model.run({name: t})[output], tensors))
    finally:
        dr_model.batcher._run_batch = original

    assert max(sizes) > 1, "concurrent calls should have shared a session run"
    assert sum(sizes) == len(tensors)
    for single, batched in zip(alone, together, strict=True):
        np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-5)


def test_batcher_mixed_shapes_and_errors_reach_their_callers() -> None:
    calls = []

    def run(feeds):
        x = feeds["x"]
        calls.append(x.shape)
        if (x < 0).any():
            raise ValueError("negative input")
        return {"y": x * 2}

    batcher = MicroBatcher(run, max_rows=16, max_wait_seconds=0.05)
    inputs = [np.full((1, 3), i, dtype=np.float32) for i in range(6)] + [np.ones((2, 5), dtype=np.float32)]
    with ThreadPoolExecutor(len(inputs)) as pool:
        results = list(pool.map(lambda x: batcher.run({"x": x})["y"], inputs))
    for x, y in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(y, x * 2)
    assert any(shape[1] == 5 for shape in calls) and any(shape[1] == 3 and shape[0] > 1 for shape in calls)

    barrier = threading.Barrier(2)

    def failing(x):
        barrier.wait()
        return batcher.run({"x": x})

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(failing, np.full((1, 3), v, dtype=np.float32)) for v in (1.0, -1.0)]
    errors = [f.exception() for f in futures]
    assert any(isinstance(e, ValueError) for e in errors)


def test_celery_thread_pool_batches_jobs_with_unchanged_results(tmp_path, redis_server, embedded_service) -> None:
    from devkit.api import run_job, submit_job, wait_job
    from devkit.fundus import png_bytes
    from devkit.services import Service, service_env

    db = redis_server.url.rsplit("/", 1)[0] + "/9"
    service = Service(tmp_path, service_env(tmp_path, db, MEDIMG_BATCH_MAX_WAIT_MS="20"))
    service.start_worker(concurrency=4, pool="threads")
    service.start_gateway()
    try:
        photos = [png_bytes(make_fundus(seed).rgb) for seed in range(8)]
        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(lambda p: submit_job(service, "dr-grading", [("a.png", p)]).json()["id"], photos))
        batched = [wait_job(service, job_id) for job_id in ids]
        alone = [run_job(embedded_service, "dr-grading", [("a.png", p)]) for p in photos]
        for one, other in zip(batched, alone, strict=True):
            assert one["status"] == "succeeded"
            assert one["result"]["probabilities"] == pytest.approx(other["result"]["probabilities"], abs=1e-4)
    finally:
        service.stop()


def test_a_leader_returns_after_its_own_batch_while_calls_keep_coming() -> None:
    """Leading hands over after one batch, so no job is held back running other jobs' batches."""
    batches_done: list[int] = []
    first_batch_running, release_first, leader_returned = threading.Event(), threading.Event(), threading.Event()
    leader_back_before_second_batch: list[bool] = []

    def run_batch(feeds):
        if len(batches_done) == 0:
            first_batch_running.set()
            release_first.wait(10)
        elif len(batches_done) == 1:  # were the leader still leading, it would be the one waiting here
            leader_back_before_second_batch.append(leader_returned.wait(3))
        batches_done.append(len(feeds["x"]))
        return {"y": feeds["x"] * 2}

    batcher = MicroBatcher(run_batch, max_rows=2, max_wait_seconds=0)
    results: dict[int, np.ndarray] = {}

    def call(i: int) -> None:
        results[i] = batcher.run({"x": np.full((1, 3), i, np.float32)})["y"]
        if i == 0:
            leader_returned.set()

    leader = threading.Thread(target=call, args=(0,))
    leader.start()
    assert first_batch_running.wait(10)
    followers = [threading.Thread(target=call, args=(i,)) for i in range(1, 11)]
    for thread in followers:
        thread.start()
    time.sleep(0.3)  # all ten are queued behind the running batch
    release_first.set()
    for thread in [leader, *followers]:
        thread.join(15)
    assert leader_back_before_second_batch == [True], "the first caller went on leading later batches"
    assert batches_done == [1, 2, 2, 2, 2, 2]
    for i in range(11):
        np.testing.assert_array_equal(results[i], np.full((1, 3), 2 * i, np.float32))


@pytest.mark.parametrize("max_parallel", [1, 2, 3])
def test_runs_overlap_up_to_max_parallel_and_every_caller_gets_its_own_rows(max_parallel: int) -> None:
    """Parallel runs (model instances) never exceed the limit, reach it under load, and lose no caller."""
    lock = threading.Lock()
    running, most = 0, 0

    def run_batch(feeds):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02)  # long enough for the other callers to pile up
        with lock:
            running -= 1
        return {"y": feeds["x"] * 2}

    batcher = MicroBatcher(run_batch, max_rows=2, max_wait_seconds=0, max_parallel=max_parallel)
    inputs = [np.full((1 + i % 2, 4 + i % 3), i, np.float32) for i in range(60)]  # mixed rows and shapes
    with ThreadPoolExecutor(16) as pool:
        outputs = list(pool.map(lambda x: batcher.run({"x": x})["y"], inputs))
    for x, y in zip(inputs, outputs, strict=True):
        np.testing.assert_array_equal(y, x * 2)
    assert most == max_parallel
    assert batcher._leaders == 0 and not batcher._pending  # every lead was handed on or given back


def test_batcher_urgent_call_is_handed_the_lead_first() -> None:
    order, release = [], threading.Event()

    def run(feeds):
        order.append(int(feeds["x"][0, 0]))
        if len(order) == 1:
            release.wait(10)  # the first batch runs until every other call waits
        return {"y": feeds["x"]}

    batcher = MicroBatcher(run, max_rows=1, max_wait_seconds=0)

    def call(value: int, urgent: bool = False) -> None:
        with urgent_calls(urgent):
            batcher.run({"x": np.full((1, 1), value, dtype=np.float32)})

    threads = []
    for value, urgent in [(0, False), (1, False), (2, False), (3, True)]:
        threads.append(threading.Thread(target=call, args=(value, urgent)))
        threads[-1].start()
        deadline = time.monotonic() + 10
        while len(order) + len(batcher._pending) < value + 1 and time.monotonic() < deadline:
            time.sleep(0.01)  # each call is pending before the next one starts
    release.set()
    for thread in threads:
        thread.join(10)
    assert order == [0, 3, 1, 2]


def test_a_box_detector_with_a_dynamic_batch_axis_runs_each_call_alone(tmp_path) -> None:
    """Its boxes [N, 4] have no batch axis: a shared run could not hand each caller its own boxes back."""
    boxes = [[0, 0, 4, 4], [2, 2, 6, 8], [1, 1, 3, 3]]
    onnx_bytes = fixed_box_detector(boxes, [0.9, 0.5, 0.2], [0, 0, 0], ["batch", 1, 8, 8])
    write_model_folder(tmp_path / "models", onnx_bytes, manifest_for(
        "dynamic-detector", "thyroid-malignancy", onnx_bytes, class_names=["nodule"],
        inputs=[{"name": "images", "dtype": "float32", "layout": "NCHW", "shape": ["batch", 1, 8, 8]}],
        outputs=[{"name": "boxes", "dtype": "float32", "layout": "NB", "shape": ["n", 4]},
                 {"name": "scores", "dtype": "float32", "layout": "N", "shape": ["n"]},
                 {"name": "labels", "dtype": "int64", "layout": "N", "shape": ["n"]}],
        decoding={"kind": "box-detection", "activation": "none", "box_format": "xyxy",
                  "box_outputs": {"boxes": "boxes", "scores": "scores", "labels": "labels"}}))
    runtime = WorkerRuntime.create(Settings(data_dir=tmp_path / "data", model_repository=tmp_path / "models",
                                            batch_max_rows=8, batch_max_wait_ms=50))
    detector = runtime.model("dynamic-detector")

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: detector.run({"images": np.zeros((1, 1, 8, 8), np.float32)}), range(6)))

    for answer in answers:
        np.testing.assert_array_equal(answer["boxes"], boxes)
    assert detector.batcher.max_rows == 1
