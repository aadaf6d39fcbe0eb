"""Benchmark a COVID lesion job on a 512 x 512 x 300 CT series on CPU: wall time and peak memory per stage.

    .venv/bin/python bench/covid_segmentation.py                 # the series of bench/ct_series.py (var/bench)
    .venv/bin/python bench/covid_segmentation.py --slices 120    # a shorter series
    .venv/bin/python bench/covid_segmentation.py --json

The job as a worker runs it: the pipeline's own `run` (its stages, reported through its StageTimer: load —
headers, sort, decode to HU; lungs — classical lung mask; infer — windowing, in-plane resize, batched ONNX
Runtime runs, probabilities resized back to the source grid; decode — small-component removal, lesions kept in
the lungs, figures; outputs — NIfTI and the PNGs of every affected slice), then the DICOM SEG the runner
builds from its masks (`dicom`). So every array the job holds at once is held here too. Memory: resident set
size, the exact peak per stage where Linux allows (else sampled every 10 ms), as in bench/ct_series.py
(whose sampler and series writer this reuses); "over baseline" counts from the RSS before the job, after the
model's warm-up. Not a test: figures depend on the machine.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.ct_series import RssSampler, job_peak, print_report, rss_bytes, series_from_arguments  # noqa: E402

MODEL_DIR = REPO_ROOT / "models" / "covid-lesion-segmentation-reference" / "1"


class StageMeter:
    """Seconds and peak RSS per stage, a stage lasting until the next one starts (a StageTimer's `on_stage`)."""

    def __init__(self, sampler: RssSampler, baseline: int) -> None:
        self.sampler, self.baseline = sampler, baseline
        self.stages: dict[str, dict] = {}
        self._current: tuple[str, float, int] | None = None

    def enter(self, name: str) -> None:
        self.close()
        before = self.sampler.reset()
        self._current = (name, time.perf_counter(), before)

    def close(self) -> None:
        if self._current is None:
            return
        name, started, before = self._current
        peak = self.sampler.peak()
        self.stages[name] = {"seconds": round(time.perf_counter() - started, 2),
                             "peak_rss_mb": round(peak / 2**20, 1), "rise_mb": round((peak - before) / 2**20, 1),
                             "over_baseline_mb": round((peak - self.baseline) / 2**20, 1)}
        self._current = None


def run(paths: list[Path], threads: int) -> dict:
    from app.model_repository import load_model_version
    from app.schemas.jobs import Job, ModelRef
    from app.schemas.options import CovidLesionSegmentationOptions
    from app.schemas.tasks import TaskName
    from workers.dicom_results import dicom_results
    from workers.onnx import load_model
    from workers.pipelines.base import JobInput, StageTimer
    from workers.pipelines.covid_lesion_segmentation import CovidLesionSegmentationPipeline

    model = load_model(load_model_version(MODEL_DIR), threads=threads)
    model.warm_up()
    manifest = model.manifest
    job = Job(id="bench", task=TaskName.COVID_LESION_SEGMENTATION,
              model=ModelRef(id=manifest.id, version=manifest.version, sha256=manifest.sha256,
                             research_use_only=manifest.research_use_only))
    inputs = [JobInput(path=path, format="dicom") for path in paths]
    sampler = RssSampler().start()
    baseline = rss_bytes()
    meter = StageMeter(sampler, baseline)
    wall = time.perf_counter()
    output = CovidLesionSegmentationPipeline().run(inputs, CovidLesionSegmentationOptions(), model,
                                                   StageTimer(on_stage=meter.enter))
    meter.enter("dicom")  # as workers/runner.py does, with the pipeline's output held meanwhile
    dicom = dicom_results(job, output, inputs)
    meter.close()
    total = time.perf_counter() - wall
    sampler.stop()
    result, artifacts = output.result, output.artifacts + dicom.artifacts
    rows, columns = _matrix(paths[0])
    hu_volume_mb = result.n_slices * rows * columns * 4 / 2**20  # float32, as workers/imaging/ct_series.py holds it
    return {
        "series": {"slices": result.n_slices, "rows": rows, "columns": columns,
                   "files_mb": round(sum(p.stat().st_size for p in paths) / 2**20, 1),
                   "hu_volume_mb": round(hu_volume_mb, 1)},
        "stages": meter.stages,
        "job_peak": job_peak(meter.stages, hu_volume_mb),
        "total_seconds": round(total, 2),
        "baseline_rss_mb": round(baseline / 2**20, 1),
        "lifetime_peak_rss_mb": round(sampler.lifetime_peak() / 2**20, 1),
        "lung_volume_ml": result.lung_volume_ml.model_dump(),
        "lesion_volume_ml": result.lesion_volume_ml.model_dump(),
        "affected_slices": len(result.affected_slices),
        "artifacts": len(artifacts),
        "artifact_mb": round(sum(len(a.data) for a in artifacts) / 2**20, 1),
        "dicom_notes": dicom.notes,
        "cpu_count": os.cpu_count(),
        "onnx_threads": threads,
        "providers": model.providers,
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def _matrix(path: Path) -> tuple[int, int]:
    import pydicom

    header = pydicom.dcmread(path, stop_before_pixels=True)
    return int(header.Rows), int(header.Columns)


def main() -> int:
    args, paths = series_from_arguments(__doc__.splitlines()[0])
    report = run(paths, args.threads)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    notes = "".join(f"; {note}" for note in report["dicom_notes"])
    print_report(report, "", f"{report['affected_slices']} affected slice(s), {report['artifacts']} artifacts "
                             f"({report['artifact_mb']} MB){notes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
