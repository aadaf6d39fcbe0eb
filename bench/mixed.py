"""Mixed workload: DR photo latency on the embedded service, idle and with CT volumes queued behind it.

    .venv/bin/python -m bench.mixed                          # default lanes, 3 repetitions
    .venv/bin/python -m bench.mixed --ct-threads 2,3,4 --repetitions 3 --photos 20

For each CT-lane cap (MEDIMG_EMBEDDED_LANES' max_threads for the two CT tasks; 3 of the pool's 4 threads is
the default) one embedded gateway runs. Each repetition visits every gateway and condition in an order that
alternates between repetitions: `idle` sends `--photos` DR jobs one after another (`Prefer: wait`); `ct-load`
does the same while a background client keeps `--ct-load` lung-nodule jobs submitted (a new one as each ends),
so the CT lane stays full and more wait. Reported per gateway and condition: the median over repetitions of
each repetition's DR p50 and p99 end-to-end latency, with the range, the DR queue wait (start minus
acceptance), and CT jobs finished per minute under load. Writes bench/results/mixed-<time>.{json,md}.
Figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np

from app.config import Lane, Settings
from devkit.api import TIMEOUT, submit_job
from devkit.ct import nodule_scan, synthetic_ct
from devkit.fundus import make_fundus, png_bytes
from devkit.reference_models import REPO_ROOT
from devkit.services import Service, service_env

RESULTS = REPO_ROOT / "bench" / "results"
CT_TASK = "lung-nodule-detection"
Upload = tuple[str, bytes]


def ct_upload(matrix: int, z_mm: float, workdir: Path) -> list[Upload]:
    scan = nodule_scan(seed=5, matrix=matrix, z_extent_mm=z_mm)
    paths = synthetic_ct().write_ct_series(scan.hu, scan.grid, workdir)
    return [(f"{index}.dcm", path.read_bytes()) for index, path in enumerate(paths)]


def ct_lanes(max_threads: int) -> str:
    ct = next(lane for lane in Settings().embedded_lanes if lane.name == "ct")
    return json.dumps([Lane(name="ct", tasks=ct.tasks, max_threads=max_threads).model_dump()])


def when(job: dict, field: str) -> float:
    return datetime.fromisoformat(job[field]).timestamp()


class CtLoad:
    """Keeps `outstanding` CT jobs submitted until stopped; counts those that finished while it ran."""

    def __init__(self, service: Service, upload: list[Upload], outstanding: int) -> None:
        self.service, self.upload = service, upload
        self.finished: list[dict] = []
        self.submitted: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._keep_one, daemon=True) for _ in range(outstanding)]

    def __enter__(self) -> CtLoad:
        for thread in self._threads:
            thread.start()
        return self

    def _keep_one(self) -> None:
        with httpx.Client(timeout=TIMEOUT) as client:
            while not self._stop.is_set():
                files = [("files", (name, data, "application/dicom")) for name, data in self.upload]
                job = client.post(f"{self.service.url}/v1/jobs", data={"task": CT_TASK}, files=files).json()
                self.submitted.append(job["id"])
                while not self._stop.is_set():
                    job = client.get(f"{self.service.url}/v1/jobs/{job['id']}", params={"wait": 1}).json()
                    if job["status"] in ("succeeded", "failed"):
                        self.finished.append(job)
                        break

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        with httpx.Client(timeout=TIMEOUT) as client:  # what is left is removed; running jobs end unseen
            for job_id in self.submitted:
                client.delete(f"{self.service.url}/v1/jobs/{job_id}")
        wait_idle(self.service)


def wait_idle(service: Service, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = httpx.get(f"{service.url}/metrics", timeout=TIMEOUT).text
        running = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                      if line.startswith("medimg_lane_running_jobs{"))
        if running == 0:
            return
        time.sleep(0.5)
    raise TimeoutError("the embedded pool did not drain")


def photo_latencies(service: Service, photos: list[bytes]) -> tuple[list[float], list[float]]:
    latencies, waits = [], []
    for index, photo in enumerate(photos):
        began = time.perf_counter()
        response = submit_job(service, "dr-grading", [(f"{index}.png", photo)], headers={"Prefer": "wait=60"})
        latencies.append(time.perf_counter() - began)
        job = response.json()
        assert job["status"] == "succeeded", job
        waits.append(when(job, "started_at") - when(job, "created_at"))
    return latencies, waits


def measure(service: Service, condition: str, photos: list[bytes], ct: list[Upload], outstanding: int) -> dict:
    if condition == "idle":
        latencies, waits = photo_latencies(service, photos)
        return {"latencies": latencies, "waits": waits}
    with CtLoad(service, ct, outstanding) as load:
        time.sleep(3)  # the CT lane fills and a backlog forms
        began = time.monotonic()
        latencies, waits = photo_latencies(service, photos)
        minutes = (time.monotonic() - began) / 60
        finished = [job for job in load.finished if job["status"] == "succeeded"]
    return {"latencies": latencies, "waits": waits, "ct_per_minute": len(finished) / minutes if minutes else 0.0}


def summarise(runs: list[dict]) -> dict:
    def stat(values: list[float]) -> dict:
        return {"median": round(float(np.median(values)), 1), "min": round(min(values), 1),
                "max": round(max(values), 1)}

    out = {"p50_ms": stat([float(np.percentile(r["latencies"], 50)) * 1000 for r in runs]),
           "p99_ms": stat([float(np.percentile(r["latencies"], 99)) * 1000 for r in runs]),
           "queue_wait_p50_ms": stat([float(np.percentile(r["waits"], 50)) * 1000 for r in runs])}
    if "ct_per_minute" in runs[0]:
        out["ct_jobs_per_minute"] = stat([r["ct_per_minute"] for r in runs])
    return out


def markdown(report: dict) -> str:
    lines = [f"# Mixed workload, {report['started']}", "",
             f"Machine: {report['machine']}; load average at start {report['load_at_start']}. "
             f"{report['repetitions']} interleaved repetitions of {report['photos']} DR photos one after another; "
             f"CT load keeps {report['ct_load']} lung-nodule jobs ({report['ct_series']}) submitted. "
             "Medians over repetitions, range in brackets.", "",
             "| CT lane cap (of 4 threads) | condition | DR p50 ms | DR p99 ms | DR queue wait p50 ms | CT jobs/min |",
             "| --- | --- | --- | --- | --- | --- |"]

    def cell(s: dict | None) -> str:
        return "–" if s is None else f"{s['median']:g} [{s['min']:g}–{s['max']:g}]"

    for cap, conditions in report["results"].items():
        for condition, s in conditions.items():
            lines.append(f"| {cap} | {condition} | {cell(s['p50_ms'])} | {cell(s['p99_ms'])} | "
                         f"{cell(s['queue_wait_p50_ms'])} | {cell(s.get('ct_jobs_per_minute'))} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ct-threads", default="3", help="CT-lane caps to compare, comma-separated (default 3)")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--photos", type=int, default=20, help="DR jobs per repetition and condition")
    parser.add_argument("--ct-load", type=int, default=6, help="CT jobs kept submitted under load")
    parser.add_argument("--ct-matrix", type=int, default=128)
    parser.add_argument("--ct-mm", type=float, default=40.0, help="CT series length along the patient")
    args = parser.parse_args()

    caps = [int(c) for c in args.ct_threads.split(",")]
    photos = [png_bytes(make_fundus(seed).rgb) for seed in range(args.photos)]
    report = {"started": datetime.now().isoformat(timespec="seconds"), "machine":
              f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
              "load_at_start": round(os.getloadavg()[0], 2), "repetitions": args.repetitions,
              "photos": args.photos, "ct_load": args.ct_load, "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        ct = ct_upload(args.ct_matrix, args.ct_mm, Path(tmp) / "ct")
        report["ct_series"] = f"{len(ct)} slices of {args.ct_matrix} x {args.ct_matrix}"
        services = {}
        try:
            for cap in caps:
                data_dir = Path(tmp) / f"cap{cap}"
                services[cap] = Service(data_dir, service_env(data_dir, MEDIMG_EMBEDDED_WORKERS="4",
                                                              MEDIMG_EMBEDDED_LANES=ct_lanes(cap)))
                services[cap].start_gateway(timeout=180)
            runs: dict[tuple[int, str], list[dict]] = {}
            order = [(cap, condition) for cap in caps for condition in ("idle", "ct-load")]
            for repetition in range(args.repetitions):
                for cap, condition in order if repetition % 2 == 0 else order[::-1]:
                    print(f"repetition {repetition + 1}: cap {cap}, {condition}", flush=True)
                    runs.setdefault((cap, condition), []).append(
                        measure(services[cap], condition, photos, ct, args.ct_load))
        finally:
            for service in services.values():
                service.stop()
    for (cap, condition), measured in sorted(runs.items()):
        report["results"].setdefault(str(cap), {})[condition] = summarise(measured)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"mixed-{datetime.now():%Y%m%d-%H%M%S}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
