"""DR grading benchmark: the service against the raw ONNX Runtime limit and a peer, in one run.

    .venv/bin/python -m bench.dr                         # reference model and ResNet-50 stand-in
    .venv/bin/python -m bench.dr --models reference --jobs 64

For each model it measures (a) raw `session.run` on preprocessed tensors at batch 1…16, the limit;
(b) `medimg predict`'s code path in-process, one job after another; (c) the embedded HTTP service under
concurrent clients; (d) Celery mode with 1 and 2 worker processes (thread pools, micro-batched); (e) the
same model in LitServe with its batching on. Throughput, p50/p95/p99 latency, the latency added to raw
`session.run` at batch 1, the per-stage breakdown the job documents carry, peak memory, and ratios to (a).
Uploads are PNG; one row sends JPEGs, as fundus cameras write. Rows marked `runs_per_core` run one
single-threaded, single-job session run per core (MEDIMG_INFERENCE_THREADS=1,
MEDIMG_INFERENCE_PARALLEL_RUNS=cores, MEDIMG_BATCH_MAX_ROWS=1) instead of the default batched run on all
cores; rows marked `ort_spinning` let ONNX Runtime's idle threads spin (its own default), beside the
service's setting. Writes bench/results/dr-<time>.{json,md}.
The stand-in needs torch (the `train` extra) to be built. Figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np

from app.config import Settings
from app.model_repository import ModelRepository
from app.schemas.tasks import TaskName
from bench.standin import build_standin_repository
from tests.utils.fundus import jpeg_bytes, make_fundus, png_bytes
from tests.utils.reference_models import MODELS_DIR, REPO_ROOT
from tests.utils.services import RedisServer, Service, free_port, service_env
from workers.imaging.fundus import preprocess_fundus
from workers.local import predict_files
from workers.runtime import WorkerRuntime

RESULTS = REPO_ROOT / "bench" / "results"
CELERY_THREADS = 4  # per worker process, as the embedded pool's default
Upload = tuple[str, bytes]  # file name, content
LONE_JOBS = 48  # jobs sent one at a time per concurrency-1 row: a median of 16 moved by a millisecond between runs
RUNS_PER_CORE = {"MEDIMG_INFERENCE_THREADS": "1", "MEDIMG_INFERENCE_PARALLEL_RUNS": str(os.cpu_count() or 1),
                 "MEDIMG_BATCH_MAX_ROWS": "1"}


def percentiles(values: list[float]) -> dict[str, float]:
    array = np.asarray(values) * 1000
    return {f"p{q}_ms": round(float(np.percentile(array, q)), 2) for q in (50, 95, 99)}


def peak_rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return round(total / 1024, 1)


def raw_limit(version, photos: list[np.ndarray]) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(str(version.onnx_path), providers=["CPUExecutionProvider"])
    tensors = np.stack([preprocess_fundus(p, version.manifest.preprocessing) for p in photos])
    by_batch = {}
    for batch in (1, 2, 4, 8, 16):
        session.run(["logits"], {"image": tensors[:batch]})
        started, done = time.perf_counter(), 0
        while done < len(tensors):
            chunk = tensors[done : done + batch]
            session.run(["logits"], {"image": chunk})
            done += len(chunk)
        by_batch[batch] = round(len(tensors) / (time.perf_counter() - started), 2)
    best = max(by_batch, key=by_batch.get)
    single = []
    for tensor in (tensors[i % len(tensors)] for i in range(LONE_JOBS)):
        started = time.perf_counter()
        session.run(["logits"], {"image": tensor[None]})
        single.append(time.perf_counter() - started)
    return {"throughput_per_s": by_batch[best], "best_batch": best, "by_batch": by_batch, **percentiles(single)}


def in_process(repository_root: Path, uploads: list[Upload]) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        settings = Settings(data_dir=Path(scratch), model_repository=repository_root)
        runtime = WorkerRuntime.create(settings)
        runtime.warm_up([TaskName.DR_GRADING])
        paths = []
        for index, (name, data) in enumerate(uploads):
            path = Path(scratch) / f"{index}-{name}"
            path.write_bytes(data)
            paths.append(path)
        latencies, stages = [], []
        started = time.perf_counter()
        for path in paths:
            begun = time.perf_counter()
            job, _ = predict_files(settings, TaskName.DR_GRADING, [path], None, show_progress=False, runtime=runtime)
            latencies.append(time.perf_counter() - begun)
            stages.append(job.stage_seconds)
        elapsed = time.perf_counter() - started
    return {"throughput_per_s": round(len(uploads) / elapsed, 2), **percentiles(latencies),
            "stages_ms": _stages(stages),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def _stages(documents: list[dict]) -> dict[str, float]:
    names = sorted({name for doc in documents for name in doc})
    return {name: round(float(np.median([doc.get(name, 0.0) for doc in documents])) * 1000, 2) for name in names}


def pooled_client(concurrency: int) -> httpx.Client:
    """One client for the whole load, as an integration engine keeps: its connections stay open, and no
    request pays (on the cores the server uses) for a new client's TLS setup and a new TCP connection."""
    return httpx.Client(timeout=120, limits=httpx.Limits(max_connections=concurrency,
                                                         max_keepalive_connections=concurrency))


def http_load(url: str, uploads: list[Upload], concurrency: int) -> dict:
    client = pooled_client(concurrency)

    def one(upload: Upload) -> tuple[float, float, dict]:
        # One round trip, as a synchronous client would (`Prefer: wait`); a 202 falls back to the long poll.
        wall, begun = time.time(), time.perf_counter()
        submitted = client.post(f"{url}/v1/jobs", data={"task": "dr-grading"}, files=[("files", upload)],
                                headers={"Prefer": "wait=60"})
        job = submitted.json()
        if submitted.status_code == 202:
            job = client.get(f"{url}{submitted.headers['location']}", params={"wait": 60}).json()
        latency = time.perf_counter() - begun
        stored_after = datetime.fromisoformat(job["created_at"]).timestamp() - wall  # the upload stage
        return latency, stored_after, job

    with client, ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, uploads[: max(concurrency, 2)]))  # warm the connection paths
        started = time.perf_counter()
        outcomes = list(pool.map(one, uploads))
        elapsed = time.perf_counter() - started
    jobs = [job for _, _, job in outcomes]
    assert all(job["status"] == "succeeded" for job in jobs), [j.get("error") for j in jobs if j["status"] != "succeeded"]
    stages = [dict(job["stage_seconds"], upload=upload) for _, upload, job in outcomes]
    for stage, job in zip(stages, jobs, strict=True):
        stage["queue_wait"] = _seconds_between(job["created_at"], job["started_at"])
    latencies = [latency for latency, _, _ in outcomes]
    return {"throughput_per_s": round(len(uploads) / elapsed, 2), **percentiles(latencies),
            "stages_ms": _stages(stages)}


def _seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def embedded(repository_root: Path, uploads: list[Upload], concurrency: int, workdir: Path, **env: str) -> dict:
    # The worker pool keeps its default size (MEDIMG_EMBEDDED_WORKERS, 4): more threads than cores only
    # contend for them, and on a CPU larger batches do not pay (see the raw batch sizes).
    data = workdir / "embedded"
    service = Service(data, service_env(data, MEDIMG_MODEL_REPOSITORY=str(repository_root), **env))
    service.start_gateway(timeout=300)
    try:
        figures = http_load(service.url, uploads, concurrency)
        figures["peak_rss_mb"] = peak_rss_mb([service.gateway.process.pid])
        return figures
    finally:
        service.stop()


def celery(repository_root: Path, uploads: list[Upload], concurrency: int, workers: int, workdir: Path,
           **env: str) -> dict:
    redis_server = RedisServer(workdir / f"redis-{workers}").start()
    data = workdir / f"celery-{workers}"
    service = Service(data, service_env(data, redis_server.url, MEDIMG_MODEL_REPOSITORY=str(repository_root), **env))
    try:
        for _ in range(workers):
            service.start_worker(concurrency=CELERY_THREADS, pool="threads")
        service.start_gateway(timeout=300)
        figures = http_load(service.url, uploads, concurrency)
        figures["peak_rss_mb"] = peak_rss_mb([p.process.pid for p in [service.gateway, *service.workers]])
        return figures
    finally:
        service.stop()
        redis_server.stop()


def litserve_peer(model_dir: Path, uploads: list[Upload], concurrency: int, workdir: Path) -> dict:
    port = free_port()
    log = (workdir / "litserve.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "bench.peer_litserve", str(model_dir), str(port), "8", "0.005"],
                               cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("LitServe did not start; see litserve.log")
            time.sleep(0.5)
        payloads = [{"image": base64.b64encode(data).decode()} for _, data in uploads]

        client = pooled_client(concurrency)

        def one(payload: dict) -> float:
            begun = time.perf_counter()
            client.post(f"http://127.0.0.1:{port}/predict", json=payload).raise_for_status()
            return time.perf_counter() - begun

        with client, ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, payloads[:concurrency]))
            started = time.perf_counter()
            latencies = list(pool.map(one, payloads))
            elapsed = time.perf_counter() - started
        pids = [process.pid] + [int(p) for p in subprocess.run(["pgrep", "-g", str(process.pid)], capture_output=True,
                                                               text=True).stdout.split()]
        return {"throughput_per_s": round(len(uploads) / elapsed, 2), **percentiles(latencies),
                "peak_rss_mb": peak_rss_mb(sorted(set(pids)))}
    finally:
        os.killpg(process.pid, 15)
        process.wait(30)


def benchmark_model(label: str, repository_root: Path, model_id: str, jobs: int, concurrency: int,
                    workdir: Path) -> dict:
    repository = ModelRepository(repository_root)
    version = repository.get(model_id)
    model_dir = version.directory
    rgbs = [make_fundus(seed).rgb for seed in range(min(jobs, 32))]
    pngs = [("fundus.png", png_bytes(rgbs[i % len(rgbs)])) for i in range(jobs)]
    jpegs = [("fundus.jpg", jpeg_bytes(rgbs[i % len(rgbs)])) for i in range(LONE_JOBS)]
    lone = pngs[:LONE_JOBS]
    rows = {"a_raw_onnxruntime": raw_limit(version, rgbs)}
    print(f"[{label}] raw limit: {rows['a_raw_onnxruntime']['throughput_per_s']}/s", flush=True)
    rows["b_predict_in_process"] = in_process(repository_root, pngs[: max(8, jobs // 4)])
    # One client at a time: the latency the service adds around the model, without queueing behind others.
    rows["c_embedded_http_c1"] = embedded(repository_root, lone, 1, workdir / label / "c1")
    rows["c_embedded_http_c1_jpeg"] = embedded(repository_root, jpegs, 1, workdir / label / "c1-jpeg")
    rows["d_celery_1_worker_c1"] = celery(repository_root, lone, 1, 1, workdir / label / "c1")
    rows[f"c_embedded_http_c{concurrency}"] = embedded(repository_root, pngs, concurrency, workdir / label)
    # One single-threaded run per core instead of one run on all cores: the CPU throughput setting, and
    # what it costs a lone job.
    rows["c_embedded_http_c1_runs_per_core"] = embedded(repository_root, lone, 1, workdir / label / "c1-per-core",
                                                        **RUNS_PER_CORE)
    rows[f"c_embedded_http_c{concurrency}_runs_per_core"] = embedded(
        repository_root, pngs, concurrency, workdir / label / "per-core", **RUNS_PER_CORE)
    # ONNX Runtime's own default, side by side with the service's (idle threads do not spin).
    rows["c_embedded_http_c1_ort_spinning"] = embedded(repository_root, lone, 1, workdir / label / "c1-spin",
                                                       MEDIMG_INFERENCE_THREAD_SPINNING="1")
    rows[f"c_embedded_http_c{concurrency}_ort_spinning"] = embedded(
        repository_root, pngs, concurrency, workdir / label / "spin", MEDIMG_INFERENCE_THREAD_SPINNING="1")
    for workers in (1, 2):
        rows[f"d_celery_{workers}_worker_c{concurrency}"] = celery(repository_root, pngs, concurrency, workers,
                                                                  workdir / label)
    rows[f"d_celery_1_worker_c{concurrency}_runs_per_core"] = celery(
        repository_root, pngs, concurrency, 1, workdir / label / "per-core", **RUNS_PER_CORE)
    rows[f"e_litserve_c{concurrency}"] = litserve_peer(model_dir, pngs, concurrency, workdir / label)
    limit = rows["a_raw_onnxruntime"]["throughput_per_s"]
    # Added latency: what a job takes beyond the bare model call, raw `session.run` at batch 1 (p50s).
    raw_p50 = rows["a_raw_onnxruntime"]["p50_ms"]
    for name, row in rows.items():
        row["ratio_to_raw"] = round(row["throughput_per_s"] / limit, 3)
        if name.startswith(("c_", "d_")):
            row["added_latency_p50_ms"] = round(row["p50_ms"] - raw_p50, 2)
        print(f"[{label}] {name}: {row['throughput_per_s']}/s ({row['ratio_to_raw']}x raw), p50 {row['p50_ms']} ms",
              flush=True)
    return rows


def markdown(report: dict) -> str:
    lines = [f"DR benchmark, {report['machine']}, {report['date']}", ""]
    for label, rows in report["models"].items():
        lines += [f"### {label}", "", "| run | jobs/s | × raw | p50 ms | p95 ms | p99 ms | added p50 ms | peak RSS MB |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, row in rows.items():
            lines.append(f"| {name} | {row['throughput_per_s']} | {row['ratio_to_raw']} | {row['p50_ms']} | "
                         f"{row['p95_ms']} | {row['p99_ms']} | {row.get('added_latency_p50_ms', '')} | "
                         f"{row.get('peak_rss_mb', '')} |")
        stages = {name: row["stages_ms"] for name, row in rows.items() if "stages_ms" in row}
        if stages:
            lines += ["", "Median stage times (ms): " + "; ".join(
                f"{name}: " + ", ".join(f"{k} {v}" for k, v in st.items()) for name, st in stages.items())]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", choices=["reference", "standin", "both"], default="both")
    parser.add_argument("--jobs", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="medimg-bench-"))
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}, load "
                         f"{os.getloadavg()[0]:.1f} at start", "models": {}}
    if args.models in ("reference", "both"):
        report["models"]["reference (dr-grading-reference, 224 px)"] = benchmark_model(
            "reference", MODELS_DIR, "dr-grading-reference", args.jobs, args.concurrency, workdir)
    if args.models in ("standin", "both"):
        root = build_standin_repository(workdir / "standin-repository")
        report["models"]["stand-in (ResNet-50, 512 px, random weights)"] = benchmark_model(
            "standin", root, "dr-grading-resnet50-standin", max(32, args.jobs // 3), args.concurrency, workdir)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"dr-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
