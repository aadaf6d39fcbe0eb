"""The README's three pictures of "knowing when not to answer", made by the service's own pipelines.

    .venv/bin/python -m bench.readme_figures

- models/dr-grading-reference/figures/quality-refusal.png: inputs the DR gate refuses, with the reason codes;
- models/dr-grading-reference/figures/saliency.png: `options.explain` on a synthetic eye whose lesions were
  pasted into its upper-right quadrant only;
- models/covid-lesion-segmentation-reference/figures/uncertainty.png: `options.uncertainty` on a synthetic
  chest CT (lesions amber/red, voxels whose call changes when the series is mirrored in cyan).
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from app.config import Settings
from app.schemas.tasks import TaskName
from devkit.covid import covid_case
from devkit.ct import write_series
from devkit.fundus import lesions_in_one_quadrant, make_fundus, png_bytes
from devkit.quality import blurred, chest_xray
from workers.local import predict_files
from workers.runtime import WorkerRuntime

MODELS = Path(__file__).resolve().parents[1] / "models"
THUMB = 160


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        settings = Settings(data_dir=work / "data")
        runtime = WorkerRuntime.create(settings)

        def run(task: TaskName, paths: list[Path], options: dict | None = None):
            job, artifacts = predict_files(settings, task, paths, json.dumps(options) if options else None,
                                           show_progress=False, runtime=runtime)
            assert job.status == "succeeded", job.error
            return job, artifacts

        refused = []
        for name, pixels in (("black photo", np.zeros((480, 480, 3), np.uint8)),
                             ("defocused fundus", blurred(make_fundus(1, size=480).rgb)),
                             ("chest X-ray", chest_xray())):
            path = work / f"{name}.png"
            path.write_bytes(png_bytes(pixels))
            job, _ = run(TaskName.DR_GRADING, [path])
            refused.append((name, pixels, [r["code"] for r in job.result["quality"]["reasons"]]))
        save(refusal_strip(refused), MODELS / "dr-grading-reference" / "figures" / "quality-refusal.png")

        photo, _ = lesions_in_one_quadrant(1)
        path = work / "eye.png"
        path.write_bytes(png_bytes(photo))
        _, artifacts = run(TaskName.DR_GRADING, [path], {"explain": True})
        save(Image.open(io.BytesIO(artifacts["saliency.png"])).resize((256, 256), Image.Resampling.LANCZOS),
             MODELS / "dr-grading-reference" / "figures" / "saliency.png")

        case = covid_case(2, matrix=128, slice_spacing=5.0)
        paths = write_series(work / "ct", case.hu, case.grid)
        _, artifacts = run(TaskName.COVID_LESION_SEGMENTATION, paths, {"uncertainty": True})
        save(Image.open(io.BytesIO(artifacts["uncertainty.png"])).resize((256, 256), Image.Resampling.NEAREST),
             MODELS / "covid-lesion-segmentation-reference" / "figures" / "uncertainty.png")


def refusal_strip(refused: list[tuple[str, np.ndarray, list[str]]]) -> Image.Image:
    strip = Image.new("RGB", (THUMB * len(refused), THUMB + 36), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for k, (name, pixels, codes) in enumerate(refused):
        thumb = Image.fromarray(pixels).convert("RGB").resize((THUMB - 8, THUMB - 8), Image.Resampling.LANCZOS)
        strip.paste(thumb, (k * THUMB + 4, 4))
        draw.text((k * THUMB + 6, THUMB + 2), name, fill=(0, 0, 0))
        draw.text((k * THUMB + 6, THUMB + 18), ", ".join(codes), fill=(190, 0, 0))
    return strip


def save(image: Image.Image, path: Path) -> None:
    """A 64-colour palette PNG: small enough to commit, plenty for a README picture."""
    path.parent.mkdir(exist_ok=True)
    image.convert("RGB").quantize(64, dither=Image.Dither.NONE).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
