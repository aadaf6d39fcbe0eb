"""DR grading benchmark: the service against the pipeline limit, raw ONNX Runtime and two peers, interleaved.

    .venv/bin/python -m bench.dr                         # reference model and ResNet-50 stand-in, 5 repeats
    .venv/bin/python -m bench.dr --models reference --jobs 64 --repeats 1

For each model, every repetition runs each row once, in this order: (a) the pipeline limit, the service's
own decode → quality → preprocess → infer → preview code for the same uploads in a process pool sized to
the cores, with no HTTP, queue or storage (bench/pipeline_limit.py), and raw `session.run` on ready
tensors at batch 1…16; (b) `medimg predict`'s code path in-process, one job after another; (c) the
embedded HTTP service; (d) Celery mode with 1 and 2 worker processes (thread pools, micro-batched);
(e) LitServe and Ray Serve with 1 and 2 workers each, batching on, set up as the service is: its ONNX Runtime
session options, its decoder and preprocessing (bench/peer_grader.py). Service rows send
`--options` (default: uncertainty and saliency off, so that every row runs one inference per image).
Each row reports the median and min–max range over the repetitions of throughput and p50/p99 latency,
with its configuration; the ratios of the service rows to the limit, to raw ONNX Runtime and to the best
peer are taken within each repetition and summarised the same way (bench/stats.py). Rows marked
`runs_per_core` run one single-threaded, single-job session run per core (MEDIMG_INFERENCE_THREADS=1,
MEDIMG_INFERENCE_PARALLEL_RUNS=cores, MEDIMG_BATCH_MAX_ROWS=1); `ort_spinning` lets ONNX Runtime's idle
threads spin (its own default). Writes bench/results/dr-<time>.{json,md}.
Needs the `bench` extra (LitServe, Ray Serve, torch for the stand-in). Figures depend on the machine and its load.
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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np

from app.config import Settings
from app.model_repository import ModelRepository
from app.schemas.tasks import TaskName
from bench import stats
from bench.peer_grader import session_settings
from bench.pipeline_limit import configuration as pipeline_configuration
from bench.pipeline_limit import pipeline_limit
from bench.standin import build_standin_repository
from devkit.fundus import jpeg_bytes, make_fundus, png_bytes
from devkit.reference_models import MODELS_DIR, REPO_ROOT
from devkit.services import RedisServer, Service, free_port, service_env
from workers.imaging.fundus import preprocess_fundus
from workers.local import predict_files
from workers.runtime import WorkerRuntime

RESULTS = REPO_ROOT / "bench" / "results"
CELERY_THREADS = 4  # per worker process, as the embedded pool's default
Upload = tuple[str, bytes]  # file name, content
LONE_JOBS = 48  # jobs sent one at a time per concurrency-1 row: a median of 16 moved by a millisecond between runs
SPINNING = {"MEDIMG_INFERENCE_THREAD_SPINNING": "1"}
# The manifest's test-time augmentation (uncertainty, on by default for the reference model) adds a batched run
# of three augmented images to each job, and saliency many more: work neither peer nor the raw limit does. The
# service rows turn both off, so every row runs one inference per image; `--options '{}'` sends what a client
# sending no options gets.
LIKE_FOR_LIKE = {"uncertainty": False, "explain": False}
RUNS_PER_CORE = {"MEDIMG_INFERENCE_THREADS": "1", "MEDIMG_INFERENCE_PARALLEL_RUNS": str(os.cpu_count() or 1),
                 "MEDIMG_BATCH_MAX_ROWS": "1"}


def fundus_photos(jobs: int) -> list[np.ndarray]:
    """The benchmark's photos: up to 32 synthetic fundus images (RGB), reused round-robin by the uploads."""
    return [make_fundus(seed).rgb for seed in range(min(jobs, 32))]


def png_uploads(rgbs: list[np.ndarray], jobs: int) -> list[Upload]:
    return [("fundus.png", png_bytes(rgbs[i % len(rgbs)])) for i in range(jobs)]


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


def in_process(repository_root: Path, uploads: list[Upload], options: dict) -> dict:
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
            job, _ = predict_files(settings, TaskName.DR_GRADING, [path], json.dumps(options), show_progress=False, runtime=runtime)
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


def http_load(url: str, uploads: list[Upload], concurrency: int, options: dict) -> dict:
    client = pooled_client(concurrency)

    def one(upload: Upload) -> tuple[float, float, dict]:
        # One round trip, as a synchronous client would (`Prefer: wait`); a 202 falls back to the long poll.
        wall, begun = time.time(), time.perf_counter()
        submitted = client.post(f"{url}/v1/jobs", data={"task": "dr-grading", "options": json.dumps(options)}, files=[("files", upload)],
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


def embedded(repository_root: Path, uploads: list[Upload], concurrency: int, workdir: Path, options: dict,
             **env: str) -> dict:
    # The worker pool keeps its default size (MEDIMG_EMBEDDED_WORKERS, 4): more threads than cores only
    # contend for them, and on a CPU larger batches do not pay (see the raw batch sizes).
    data = workdir / "embedded"
    service = Service(data, service_env(data, MEDIMG_MODEL_REPOSITORY=str(repository_root), **env))
    service.start_gateway(timeout=300)
    try:
        figures = http_load(service.url, uploads, concurrency, options)
        figures["peak_rss_mb"] = peak_rss_mb([service.gateway.process.pid])
        return figures
    finally:
        service.stop()


def celery(repository_root: Path, uploads: list[Upload], concurrency: int, workers: int, workdir: Path,
           options: dict, **env: str) -> dict:
    redis_server = RedisServer(workdir / f"redis-{workers}").start()
    data = workdir / f"celery-{workers}"
    service = Service(data, service_env(data, redis_server.url, MEDIMG_MODEL_REPOSITORY=str(repository_root), **env))
    try:
        for _ in range(workers):
            service.start_worker(concurrency=CELERY_THREADS, pool="threads")
        service.start_gateway(timeout=300)
        figures = http_load(service.url, uploads, concurrency, options)
        figures["peak_rss_mb"] = peak_rss_mb([p.process.pid for p in [service.gateway, *service.workers]])
        return figures
    finally:
        service.stop()
        redis_server.stop()


PEERS = {"litserve": "bench.peer_litserve", "rayserve": "bench.peer_rayserve"}
PEER_BATCH_TIMEOUT_S = 0.005


def peer_configuration(server: str, workers: int) -> dict:
    return {"server": server, "workers": workers, "max_batch": Settings().batch_max_rows,
            "batch_timeout_s": PEER_BATCH_TIMEOUT_S, "onnxruntime": session_settings(),
            "decoder": "workers.imaging.photo.decode_photo",
            "work_per_image": "decode, fundus quality gate, crop and resize, one inference, JPEG preview"}


def peer(server: str, workers: int, model_dir: Path, uploads: list[Upload], concurrency: int, workdir: Path) -> dict:
    """A peer server (bench/peer_*.py) in its own process group, loaded by the same pooled client."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = (workdir / f"{server}.log").open("wb")
    config = peer_configuration(server, workers)
    process = subprocess.Popen([sys.executable, "-m", PEERS[server], str(model_dir), str(port), str(workers),
                                str(config["max_batch"]), str(PEER_BATCH_TIMEOUT_S)],
                               cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    payloads = [{"image": base64.b64encode(data).decode()} for _, data in uploads]
    url = f"http://127.0.0.1:{port}/predict"
    try:
        deadline = time.monotonic() + 300
        while True:  # ready once it grades a photo (each server has its own health route, or none)
            try:
                if httpx.post(url, json=payloads[0], timeout=30).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{server} did not start; see {workdir / (server + '.log')}")
            time.sleep(0.5)
        client = pooled_client(concurrency)

        def one(payload: dict) -> float:
            begun = time.perf_counter()
            client.post(url, json=payload).raise_for_status()
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
        process.wait(60)


def limit_row(model_dir: Path, uploads: list[Upload], options: dict) -> dict:
    throughput, latencies = pipeline_limit(model_dir, uploads, options)
    return {"throughput_per_s": round(throughput, 2), **percentiles(latencies)}


# Rows whose ratios the summary reports: the service at concurrency C against the limit and the best peer.
SERVICE_ROWS = ("c_embedded_http_c{c}", "d_celery_1_worker_c{c}")
LIMIT_ROW = "a_pipeline_limit"


def rows_of_model(repository_root: Path, model_id: str, jobs: int, concurrency: int,
                  options: dict) -> dict[str, tuple[dict, Callable[[Path], dict]]]:
    """name -> (configuration, run(workdir) -> figures), in the order one repetition runs them."""
    rgbs = fundus_photos(jobs)
    pngs = png_uploads(rgbs, jobs)
    jpegs = [("fundus.jpg", jpeg_bytes(rgbs[i % len(rgbs)])) for i in range(LONE_JOBS)]
    lone = pngs[:LONE_JOBS]
    version = ModelRepository(repository_root).get(model_id)
    model_dir = version.directory
    sent = {"options": options}
    service = {"onnxruntime": session_settings(), **sent}
    c = concurrency
    rows = {
        LIMIT_ROW: (pipeline_configuration(options), lambda w: limit_row(model_dir, pngs, options)),
        "a_raw_onnxruntime": ({"session": "onnxruntime defaults (idle threads spin)", "input": "ready tensors",
                               "batch": "best of 1, 2, 4, 8, 16"}, lambda w: raw_limit(version, rgbs)),
        "b_predict_in_process": (service, lambda w: in_process(repository_root, pngs[: max(8, jobs // 4)], options)),
        # One client at a time: the latency the service adds around the model, without queueing behind others.
        "c_embedded_http_c1": (service, lambda w: embedded(repository_root, lone, 1, w, options)),
        "c_embedded_http_c1_jpeg": (service, lambda w: embedded(repository_root, jpegs, 1, w, options)),
        "d_celery_1_worker_c1": ({**service, "celery_workers": 1, "threads": CELERY_THREADS},
                                 lambda w: celery(repository_root, lone, 1, 1, w, options)),
        f"c_embedded_http_c{c}": (service, lambda w: embedded(repository_root, pngs, c, w, options)),
        # One single-threaded run per core instead of one run on all cores: the CPU throughput setting, and
        # what it costs a lone job.
        "c_embedded_http_c1_runs_per_core": ({**service, "env": RUNS_PER_CORE},
                                             lambda w: embedded(repository_root, lone, 1, w, options, **RUNS_PER_CORE)),
        f"c_embedded_http_c{c}_runs_per_core": (
            {**service, "env": RUNS_PER_CORE}, lambda w: embedded(repository_root, pngs, c, w, options, **RUNS_PER_CORE)),
        # ONNX Runtime's own default, side by side with the service's (idle threads do not spin).
        f"c_embedded_http_c{c}_ort_spinning": (
            {**service, "env": SPINNING}, lambda w: embedded(repository_root, pngs, c, w, options, **SPINNING)),
    }
    for workers in (1, 2):
        rows[f"d_celery_{workers}_worker_c{c}"] = (
            {**service, "celery_workers": workers, "threads": CELERY_THREADS},
            lambda w, n=workers: celery(repository_root, pngs, c, n, w, options))
    rows[f"d_celery_1_worker_c{c}_runs_per_core"] = (
        {**service, "celery_workers": 1, "threads": CELERY_THREADS, "env": RUNS_PER_CORE},
        lambda w: celery(repository_root, pngs, c, 1, w, options, **RUNS_PER_CORE))
    for server in PEERS:
        for workers in (1, 2):  # the peer's best worker count on these cores is chosen from both, per model
            rows[f"e_{server}_{workers}_worker_c{c}"] = (
                peer_configuration(server, workers),
                lambda w, s=server, n=workers: peer(s, n, model_dir, pngs, c, w))
    return rows


def benchmark_model(label: str, repository_root: Path, model_id: str, jobs: int, concurrency: int,
                    workdir: Path, repeats: int, options: dict) -> dict:
    rows = rows_of_model(repository_root, model_id, jobs, concurrency, options)
    runs: dict[str, list[dict]] = {name: [] for name in rows}
    for repeat in range(repeats):  # interleaved: every row once per repetition, so drift hits them alike
        for name, (_, run) in rows.items():
            figures = run(workdir / label / f"repeat-{repeat}" / name)
            runs[name].append(figures)
            print(f"[{label}] {repeat + 1}/{repeats} {name}: {figures['throughput_per_s']}/s, "
                  f"p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms", flush=True)
    summary = {name: {"configuration": config, "runs": runs[name],
                      **{key: stats.spread([r[key] for r in runs[name]])
                         for key in ("throughput_per_s", "p50_ms", "p99_ms")}}
               for name, (config, _) in rows.items()}
    return {"rows": summary, "ratios": ratios(runs, concurrency)}


def ratios(runs: dict[str, list[dict]], concurrency: int) -> dict:
    """Service rows against the pipeline limit, raw ONNX Runtime and the best peer, repetition by repetition."""
    def column(name: str, key: str = "throughput_per_s") -> list[float]:
        return [run[key] for run in runs[name]]

    peers = [name for name in runs if name.startswith("e_")]
    best_peer = max(peers, key=lambda name: stats.spread(column(name))["median"])
    out = {"best_peer": best_peer}
    for template in SERVICE_ROWS:
        name = template.format(c=concurrency)
        out[name] = {
            "throughput_to_limit": stats.paired_ratios(column(name), column(LIMIT_ROW)),
            "p50_to_limit": stats.paired_ratios(column(name, "p50_ms"), column(LIMIT_ROW, "p50_ms")),
            "throughput_to_raw": stats.paired_ratios(column(name), column("a_raw_onnxruntime")),
            "throughput_to_best_peer": stats.paired_ratios(column(name), column(best_peer)),
            "p99_to_best_peer": stats.paired_ratios(column(name, "p99_ms"), column(best_peer, "p99_ms")),
        }
    return out


def markdown(report: dict) -> str:
    lines = [f"DR benchmark, {report['machine']}, {report['date']}, {report['repeats']} interleaved repetitions: "
             "medians with min–max ranges", "", f"Service rows send options {json.dumps(report['options'])}.", ""]
    for label, model in report["models"].items():
        lines += [f"### {label}", "", "| run | jobs/s | p50 ms | p99 ms | configuration |",
                  "| --- | ---: | ---: | ---: | --- |"]
        for name, row in model["rows"].items():
            lines.append(f"| {name} | {stats.text(row['throughput_per_s'])} | {stats.text(row['p50_ms'])} | "
                         f"{stats.text(row['p99_ms'])} | `{json.dumps(row['configuration'])}` |")
        lines += ["", f"Ratios (per repetition, then median and range); best peer: {model['ratios']['best_peer']}", "",
                  "| service row | jobs/s ÷ limit | p50 ÷ limit | jobs/s ÷ raw | jobs/s ÷ best peer | p99 ÷ best peer |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for name, ratio in model["ratios"].items():
            if name == "best_peer":
                continue
            lines.append(f"| {name} | " + " | ".join(stats.text(ratio[key]) for key in (
                "throughput_to_limit", "p50_to_limit", "throughput_to_raw", "throughput_to_best_peer",
                "p99_to_best_peer")) + " |")
        stages = {name: row["runs"][0]["stages_ms"] for name, row in model["rows"].items() if "stages_ms" in row["runs"][0]}
        if stages:
            lines += ["", "Median stage times of the first repetition (ms): " + "; ".join(
                f"{name}: " + ", ".join(f"{k} {v}" for k, v in st.items()) for name, st in stages.items())]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", choices=["reference", "standin", "both"], default="both")
    parser.add_argument("--jobs", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions of every row")
    parser.add_argument("--options", type=json.loads, default=LIKE_FOR_LIKE,
                        help="the DR options every service row sends, JSON (default: %(default)s)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="medimg-bench-"))
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}, load "
                         f"{os.getloadavg()[0]:.1f} at start", "repeats": args.repeats, "options": args.options, "models": {}}
    if args.models in ("reference", "both"):
        report["models"]["reference (dr-grading-reference, 224 px)"] = benchmark_model(
            "reference", MODELS_DIR, "dr-grading-reference", args.jobs, args.concurrency, workdir, args.repeats,
            args.options)
    if args.models in ("standin", "both"):
        root = build_standin_repository(workdir / "standin-repository")
        report["models"]["stand-in (ResNet-50, 512 px, random weights)"] = benchmark_model(
            "standin", root, "dr-grading-resnet50-standin", max(32, args.jobs // 3), args.concurrency, workdir,
            args.repeats, args.options)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"dr-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
