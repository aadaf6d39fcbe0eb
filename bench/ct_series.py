"""Benchmark the lung-nodule pipeline on a 512 x 512 x 300 CT series on CPU: wall time and peak memory per stage.

    .venv/bin/python bench/ct_series.py                    # writes the series once to var/bench/ct-512x512x300
    .venv/bin/python bench/ct_series.py --slices 120       # a shorter series
    .venv/bin/python bench/ct_series.py --json             # machine-readable

Stages: decode (read headers, sort, decode every slice to HU — the pipeline's `load`), preprocessing
(resample to the model's spacing + window), inference (sliding window through ONNX Runtime) and
postprocessing (connected components, NMS, mapping to patient mm, overlay PNGs). Memory is the process's
resident set size (ONNX Runtime's allocations included): the peak during each stage — exact, from the kernel's
high-water mark restarted at each stage, where Linux allows; else sampled every 10 ms — its rise over the RSS at
the stage's start and over the RSS before the job (after the model's warm-up); the job's peak over that
baseline as a multiple of the float32 HU volume; and the process's lifetime peak. Not a test: figures depend
on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from devkit.reference_models import load_reference_module  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * PAGE


def _reset_high_water_mark() -> bool:
    """Linux: restart VmHWM (the exact peak RSS) from the current RSS; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as stream:
            stream.write("5")
        return True
    except OSError:
        return False


def _high_water_mark() -> int:
    with open("/proc/self/status") as stream:
        for line in stream:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class RssSampler:
    """Peak RSS per stage: the kernel's high-water mark restarted at each stage where Linux allows it (exact,
    however short the peak), and a background thread sampling every 10 ms in any case."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.current_peak = 0
        self._exact = False
        self._lifetime_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.current_peak = max(self.current_peak, rss_bytes())
            time.sleep(self.interval)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def reset(self) -> int:
        self._lifetime_peak = self.lifetime_peak()  # restarting the high-water mark restarts ru_maxrss too
        self._exact = _reset_high_water_mark()
        now = rss_bytes()
        self.current_peak = now
        return now

    def peak(self) -> int:
        """The highest RSS since the last `reset`."""
        return max(self.current_peak, rss_bytes(), _high_water_mark() if self._exact else 0)

    def lifetime_peak(self) -> int:
        """The process's peak RSS since it started (getrusage's ru_maxrss, kept across resets)."""
        return max(self._lifetime_peak, self.peak(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def make_series(directory: Path, slices: int, matrix: int, seed: int) -> list[Path]:
    existing = sorted(directory.glob("*.dcm"))
    if len(existing) == slices:
        return existing
    sc = load_reference_module("lung-nodule-reference", "synthetic_ct")
    print(f"writing a {matrix}x{matrix}x{slices} synthetic series to {directory} (once) …", file=sys.stderr)
    scan = sc.simulate_scan(np.random.default_rng(seed), matrix=matrix, pixel_spacing=0.7, slice_spacing=1.0,
                            orientation="HFS", rotation_deg=0.0, z_extent_mm=float(slices), n_nodules=5)
    for path in existing:
        path.unlink()
    return sc.write_ct_series(scan.hu, scan.grid, directory, shuffle_names=True)


def run(paths: list[Path], threads: int) -> dict:
    from app.model_repository import load_model_version
    from app.schemas.options import LungNoduleDetectionOptions
    from workers.imaging.ct_series import load_ct_series
    from workers.onnx import load_model
    from workers.pipelines.lung_nodule_detection import (
        build_result,
        decode_components,
        nodule_overlay,
        onnx_runner,
        preprocess,
        sliding_window_probability,
    )

    model = load_model(load_model_version(REPO_ROOT / "models" / "lung-nodule-reference" / "1"), threads=threads)
    model.warm_up()
    manifest = model.manifest
    sampler = RssSampler().start()
    stages: dict[str, dict] = {}

    def stage(name: str, function):
        before = sampler.reset()
        started = time.perf_counter()
        value = function()
        seconds = time.perf_counter() - started
        peak = sampler.peak()
        stages[name] = {"seconds": round(seconds, 2), "peak_rss_mb": round(peak / 2**20, 1),
                        "rise_mb": round((peak - before) / 2**20, 1),
                        "over_baseline_mb": round((peak - baseline) / 2**20, 1)}
        return value

    baseline = rss_bytes()
    wall = time.perf_counter()
    ct = stage("decode", lambda: load_ct_series(paths))
    resampled = stage("preprocessing", lambda: preprocess(ct, manifest))
    probability = stage("inference",
                        lambda: sliding_window_probability(resampled.volume, manifest, onnx_runner(model)))

    def postprocess():
        candidates = decode_components(probability, resampled.spacing_mm, manifest)
        result = build_result(candidates, ct, resampled, manifest, LungNoduleDetectionOptions())
        return result, [nodule_overlay(ct, f) for f in result.nodules]

    result, artifacts = stage("postprocessing", postprocess)
    total = time.perf_counter() - wall
    sampler.stop()
    return {
        "series": {"slices": int(ct.hu.shape[0]), "rows": int(ct.hu.shape[1]), "columns": int(ct.hu.shape[2]),
                   "files_mb": round(sum(p.stat().st_size for p in paths) / 2**20, 1),
                   "hu_volume_mb": round(ct.hu.nbytes / 2**20, 1),
                   "resampled_shape": list(resampled.volume.shape)},
        "stages": stages,
        "job_peak": job_peak(stages, ct.hu.nbytes / 2**20),
        "total_seconds": round(total, 2),
        "baseline_rss_mb": round(baseline / 2**20, 1),
        "lifetime_peak_rss_mb": round(sampler.lifetime_peak() / 2**20, 1),
        "findings": len(result.nodules),
        "artifacts": len(artifacts),
        "cpu_count": os.cpu_count(),
        "onnx_threads": threads,
        "providers": model.providers,
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def series_from_arguments(description: str) -> tuple[argparse.Namespace, list[Path]]:
    """The command line both CT benchmarks take, and the series it names (written once, then reused)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--dir", type=Path, default=None, help="series folder (default var/bench/ct-<size>)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    directory = args.dir or REPO_ROOT / "var" / "bench" / f"ct-{args.matrix}x{args.matrix}x{args.slices}"
    directory.mkdir(parents=True, exist_ok=True)
    return args, make_series(directory, args.slices, args.matrix, args.seed)


def job_peak(stages: dict[str, dict], hu_volume_mb: float) -> dict:
    """The job's peak RSS over the baseline, also as a multiple of the float32 HU volume (issue #9: under 3)."""
    over = max(figures["over_baseline_mb"] for figures in stages.values())
    return {"over_baseline_mb": over, "volumes": round(over / hu_volume_mb, 2)}


def print_report(report: dict, series_extra: str, total_extra: str) -> None:
    series = report["series"]
    print(f"series {series['columns']}x{series['rows']}x{series['slices']} ({series['files_mb']} MB of DICOM; "
          f"HU volume {series['hu_volume_mb']} MB float32{series_extra})")
    print(f"{'stage':<16}{'seconds':>10}{'peak RSS MB':>14}{'rise MB':>10}{'over baseline MB':>19}")
    for name, figures in report["stages"].items():
        print(f"{name:<16}{figures['seconds']:>10.2f}{figures['peak_rss_mb']:>14.1f}{figures['rise_mb']:>10.1f}"
              f"{figures['over_baseline_mb']:>19.1f}")
    print(f"{'total':<16}{report['total_seconds']:>10.2f}   lifetime peak RSS {report['lifetime_peak_rss_mb']} MB "
          f"(baseline {report['baseline_rss_mb']} MB); {total_extra}; load average {report['load_average']}")
    peak = report["job_peak"]
    print(f"job peak {peak['over_baseline_mb']} MB over the baseline = {peak['volumes']}x the float32 HU volume")


def main() -> int:
    args, paths = series_from_arguments(__doc__.splitlines()[0])
    report = run(paths, args.threads)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print_report(report, f"; resampled {report['series']['resampled_shape']}", f"{report['findings']} finding(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
