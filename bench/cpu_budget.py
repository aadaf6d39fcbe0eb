"""Where the CPU goes when the embedded service grades photos at concurrency 16: per job, in the gateway's threads,
in the load client, and what is left idle on the machine.

    .venv/bin/python -m bench.cpu_budget                  # reference model, 96 jobs, concurrency 16
    .venv/bin/python -m bench.cpu_budget --jobs 192 --env MEDIMG_EMBEDDED_WORKERS=2

The load is `bench.dr`'s (same photos, same pooled client, `Prefer: wait`). CPU times are read from
/proc/<pid>/task/*/stat before and after the timed jobs, so warm-up is excluded; the machine's share comes from
/proc/stat over the same window. A service that leaves the cores idle while callers wait is held by something
other than CPU (the GIL, a lock, a queue); one that fills them spends its CPU somewhere this table names.
Writes bench/results/cpu-budget-<time>.json. Figures depend on the machine and its load: run it quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.dr import LIKE_FOR_LIKE, RESULTS, fundus_photos, http_load, png_uploads
from devkit.reference_models import MODELS_DIR
from devkit.services import Service, service_env

TICK_S = 1 / os.sysconf("SC_CLK_TCK")
PY_SPY = Path(sys.executable).with_name("py-spy")  # optional: `pip install py-spy` into the same environment


def task_seconds(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each live thread of `pid`, by native thread id."""
    seconds = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended between the listing and the read
        fields = stat[stat.rindex(")") + 2 :].split()
        seconds[int(task.name)] = (int(fields[11]) + int(fields[12])) * TICK_S
    return seconds


def python_thread_names(pid: int) -> dict[int, str]:
    """Native thread id -> Python thread name, from `py-spy dump` (empty when py-spy is not installed)."""
    if not PY_SPY.exists():
        return {}
    dump = subprocess.run([str(PY_SPY), "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60,
                          check=False).stdout
    names = {}
    for line in dump.splitlines():  # Thread 12816 (idle): "medimg-worker-0"
        if line.startswith("Thread ") and '"' in line:
            names[int(line.split()[1])] = line.split('"')[1].rstrip("0123456789").rstrip("-_")
    return names


def by_thread_name(before: dict[int, float], after: dict[int, float], names: dict[int, str]) -> dict[str, float]:
    """CPU seconds per thread name over the window; threads Python does not know (ONNX Runtime's pool, the
    resize helpers' native side) are summed as `native`; threads that ended inside the window are missing."""
    spent: dict[str, float] = {}
    for tid, seconds in after.items():
        name = names.get(tid, "native")
        spent[name] = spent.get(name, 0.0) + seconds - before.get(tid, 0.0)
    return spent


def process_seconds(pid: int) -> float:
    """CPU seconds (user + system) of the whole process, its ended threads included."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def machine_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, steal counted as neither."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq = fields[:7]
    busy = user + nice + system + irq + softirq
    return busy * TICK_S, (busy + idle + iowait) * TICK_S


def alone_budget(uploads: list[tuple[str, bytes]]) -> dict:
    """The pipeline limit's per-photo work (`bench/pipeline_limit.py`: one single-threaded session, the DR pipeline)
    run here, one photo after another: the CPU grading costs without serving around it or other jobs beside it."""
    from bench import pipeline_limit

    pipeline_limit._load(str(MODELS_DIR / "dr-grading-reference" / "1"), LIKE_FOR_LIKE)
    with tempfile.TemporaryDirectory(prefix="medimg-cpu-alone-") as scratch:
        paths = []
        for index, (name, data) in enumerate(uploads):
            paths.append(Path(scratch) / f"{index}-{name}")
            paths[-1].write_bytes(data)
        pipeline_limit._grade(str(paths[0]))  # warm
        cpu_before, started = time.process_time(), time.perf_counter()
        for path in paths:
            pipeline_limit._grade(str(path))
        cpu, wall = time.process_time() - cpu_before, time.perf_counter() - started
    return {"jobs": len(paths), "cpu_ms_per_job": round(1000 * cpu / len(paths), 2),
            "wall_ms_per_job": round(1000 * wall / len(paths), 2)}


def photos(jobs: int) -> list[tuple[str, bytes]]:
    """bench.dr's uploads: its synthetic fundus photos as PNG."""
    return png_uploads(fundus_photos(jobs), jobs)


def budget(jobs: int, concurrency: int, env: dict[str, str], profile: Path | None = None) -> dict:
    uploads = photos(jobs)
    with tempfile.TemporaryDirectory(prefix="medimg-cpu-") as scratch:
        data = Path(scratch) / "embedded"
        service = Service(data, service_env(data, MEDIMG_MODEL_REPOSITORY=str(MODELS_DIR), **env))
        service.start_gateway(timeout=300)
        try:
            http_load(service.url, uploads[:concurrency * 2], concurrency, LIKE_FOR_LIKE)  # warm every path
            pid = service.gateway.process.pid
            names = python_thread_names(pid)
            tasks_before = task_seconds(pid)
            gateway_before, client_before = process_seconds(pid), process_seconds(os.getpid())
            busy_before, total_before = machine_seconds()
            spy = None
            if profile is not None:  # sampled stacks of every thread, idle ones left out
                spy = subprocess.Popen([str(PY_SPY), "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
                                        "--output", str(profile), "--nonblocking"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)
            started = time.perf_counter()
            figures = http_load(service.url, uploads, concurrency, LIKE_FOR_LIKE)
            elapsed = time.perf_counter() - started
            if spy is not None:
                spy.send_signal(2)  # SIGINT: py-spy writes what it has sampled
                spy.wait(timeout=60)
            gateway_after, client_after = process_seconds(pid), process_seconds(os.getpid())
            tasks_after = task_seconds(pid)
            names.update(python_thread_names(pid))
            busy_after, total_after = machine_seconds()
        finally:
            service.stop()

    cores = os.cpu_count() or 1
    return {
        "jobs": jobs, "concurrency": concurrency, "env": env, "load_at_start": round(os.getloadavg()[0], 2),
        "throughput_per_s": figures["throughput_per_s"], "p50_ms": figures["p50_ms"], "p99_ms": figures["p99_ms"],
        "gateway_cpu_ms_per_job": round(1000 * (gateway_after - gateway_before) / jobs, 2),
        "gateway_threads_ms_per_job": {name: round(1000 * seconds / jobs, 2) for name, seconds in sorted(
            by_thread_name(tasks_before, tasks_after, names).items(), key=lambda kv: -kv[1])},
        "client_cpu_ms_per_job": round(1000 * (client_after - client_before) / jobs, 2),
        "machine_busy_share": round((busy_after - busy_before) / max(total_after - total_before, 1e-9), 3),
        "cores": cores, "wall_s": round(elapsed, 2), "stages_ms": figures["stages_ms"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--env", action="append", default=[], help="NAME=value for the gateway (repeatable)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="also write py-spy's collapsed stacks of the gateway under load to this file")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    report = {"service": budget(args.jobs, args.concurrency, env, args.profile),
              "pipeline_alone": alone_budget(photos(args.jobs))}
    text = json.dumps(report, indent=2)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"cpu-budget-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
