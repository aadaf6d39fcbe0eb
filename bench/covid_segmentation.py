"""Benchmark the COVID lesion pipeline on a 512 x 512 x 300 CT series on CPU: wall time and peak memory per stage.

    .venv/bin/python bench/covid_segmentation.py                 # the series of bench/ct_series.py (var/bench)
    .venv/bin/python bench/covid_segmentation.py --slices 120    # a shorter series
    .venv/bin/python bench/covid_segmentation.py --json

Stages follow the pipeline: decode (headers, sort, decode to HU — the pipeline's `load`), lungs (classical
lung mask), inference (windowing, in-plane resize, batched ONNX Runtime runs, probabilities resized back to
the source grid), postprocessing (small-component removal, lesions kept in the lungs, figures) and outputs
(NIfTI and the PNGs of every affected slice). Memory: resident set size sampled every 10 ms, as in
bench/ct_series.py (whose sampler and series writer this reuses). Not a test: figures depend on the machine.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.ct_series import RssSampler, print_report, rss_bytes, series_from_arguments  # noqa: E402

MODEL_DIR = REPO_ROOT / "models" / "covid-lesion-segmentation-reference" / "1"


def run(paths: list[Path], threads: int) -> dict:
    from app.model_repository import load_model_version
    from workers.imaging.ct_series import load_ct_series
    from workers.imaging.lungs import segment_lungs
    from workers.onnx import load_model
    from workers.pipelines.covid_lesion_segmentation import (
        build_result,
        decode_labels,
        onnx_runner,
        predict_labels,
        write_artifacts,
    )

    model = load_model(load_model_version(MODEL_DIR), threads=threads)
    model.warm_up()
    manifest = model.manifest
    sampler = RssSampler().start()
    stages: dict[str, dict] = {}

    def stage(name: str, function):
        before = sampler.reset()
        started = time.perf_counter()
        value = function()
        seconds = time.perf_counter() - started
        peak = max(sampler.current_peak, rss_bytes())
        stages[name] = {"seconds": round(seconds, 2), "peak_rss_mb": round(peak / 2**20, 1),
                        "rise_mb": round((peak - before) / 2**20, 1)}
        return value

    baseline = rss_bytes()
    wall = time.perf_counter()
    ct = stage("decode", lambda: load_ct_series(paths))
    lungs = stage("lungs", lambda: segment_lungs(ct.hu, ct.affine, ct.spacing_mm))
    raw = stage("inference", lambda: predict_labels(ct.hu, manifest, onnx_runner(model)))

    def postprocess():
        labels, extended = decode_labels(raw, lungs, ct.affine, manifest)
        return labels, build_result(ct, labels, extended, manifest)

    labels, result = stage("postprocessing", postprocess)
    artifacts = stage("outputs", lambda: write_artifacts(ct, labels, result.affected_slices))
    total = time.perf_counter() - wall
    sampler.stop()
    return {
        "series": {"slices": int(ct.hu.shape[0]), "rows": int(ct.hu.shape[1]), "columns": int(ct.hu.shape[2]),
                   "files_mb": round(sum(p.stat().st_size for p in paths) / 2**20, 1),
                   "hu_volume_mb": round(ct.hu.nbytes / 2**20, 1)},
        "stages": stages,
        "total_seconds": round(total, 2),
        "baseline_rss_mb": round(baseline / 2**20, 1),
        "lifetime_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "lung_volume_ml": result.lung_volume_ml.model_dump(),
        "lesion_volume_ml": result.lesion_volume_ml.model_dump(),
        "affected_slices": len(result.affected_slices),
        "artifacts": len(artifacts),
        "artifact_mb": round(sum(len(a.data) for a in artifacts) / 2**20, 1),
        "cpu_count": os.cpu_count(),
        "onnx_threads": threads,
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def main() -> int:
    args, paths = series_from_arguments(__doc__.splitlines()[0])
    report = run(paths, args.threads)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print_report(report, "", f"{report['affected_slices']} affected slice(s), {report['artifacts']} artifacts "
                             f"({report['artifact_mb']} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
