"""What the quality gate, uncertainty and saliency cost: stage times of real jobs (`medimg predict`'s path),
medians of interleaved repetitions with their ranges.

    .venv/bin/python -m bench.quality_cost [--repeats 5]

Per task, the same input runs with the options off and on in turn, so load on the machine hits both alike.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from app.config import Settings
from app.schemas.tasks import TaskName
from devkit.covid import covid_case
from devkit.ct import nodule_scan, write_series
from devkit.fundus import make_fundus, png_bytes
from devkit.ultrasound import make_frame, png_bytes as us_png_bytes
from workers.local import predict_files
from workers.runtime import WorkerRuntime

STAGES = ("quality", "infer", "classify", "uncertainty", "saliency")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        settings = Settings(data_dir=work / "data")
        runtime = WorkerRuntime.create(settings)
        eye, frame = work / "eye.png", work / "frame.png"
        eye.write_bytes(png_bytes(make_fundus(11, size=640).rgb))
        frame.write_bytes(us_png_bytes(make_frame(5).frame))
        chest = covid_case(2, matrix=128, slice_spacing=5.0)
        scan = nodule_scan(seed=7)
        cases = [
            ("dr-grading", TaskName.DR_GRADING, [eye], {"uncertainty": False}, {"uncertainty": True, "explain": True}),
            ("thyroid-malignancy", TaskName.THYROID_MALIGNANCY, [frame], {"uncertainty": False},
             {"uncertainty": True, "explain": True}),
            ("covid 128x128x(5 mm)", TaskName.COVID_LESION_SEGMENTATION,
             write_series(work / "chest", chest.hu, chest.grid), {}, {"uncertainty": True}),
            ("lung nodules 256x256x(2.5 mm)", TaskName.LUNG_NODULE_DETECTION,
             write_series(work / "scan", scan.hu, scan.grid), {}, {"uncertainty": True}),
        ]
        for label, task, paths, off, on in cases:
            times: dict[str, dict[str, list[float]]] = {"off": {}, "on": {}}
            for _ in range(args.repeats):
                for mode, options in (("off", off), ("on", on)):
                    job, _ = predict_files(settings, task, paths, json.dumps(options), show_progress=False,
                                           runtime=runtime)
                    assert job.status == "succeeded", job.error
                    for stage, seconds in job.stage_seconds.items():
                        times[mode].setdefault(stage, []).append(seconds)
                    times[mode].setdefault("total", []).append(sum(job.stage_seconds.values()))
            for mode in ("off", "on"):
                shown = [f"{stage} {fmt(times[mode][stage])}" for stage in (*STAGES, "total") if stage in times[mode]]
                print(f"{label}, options {json.dumps(off if mode == 'off' else on)}: " + "; ".join(shown))


def fmt(values: list[float]) -> str:
    ms = np.asarray(values) * 1000
    return f"{np.median(ms):.0f} ms ({ms.min():.0f}-{ms.max():.0f})"


if __name__ == "__main__":
    main()
