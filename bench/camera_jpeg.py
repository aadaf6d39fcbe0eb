"""Camera-sized fundus JPEGs for DR: decoded in full against decoded at reduced DCT scale, side by side.

    .venv/bin/python -m bench.camera_jpeg                 # 12 synthetic photos of 2000 px
    .venv/bin/python -m bench.camera_jpeg --photos 4 --size 3000

For each photo: decode plus preprocessing time both ways (best of 3), the grade both ways, and the largest
difference between the two probability vectors. The serving pipeline decodes at reduced scale
(`workers.pipelines.dr_grading.decode_side`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from app.model_repository import load_model_version
from devkit.fundus import jpeg_bytes, make_fundus
from devkit.reference_models import reference_model_dir
from workers.decoding import activate
from workers.imaging.fundus import preprocess_fundus
from workers.imaging.photo import load_photo
from workers.onnx import load_model
from workers.pipelines.dr_grading import decode_side


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=12)
    parser.add_argument("--size", type=int, default=2000)
    args = parser.parse_args()
    model = load_model(load_model_version(reference_model_dir("dr-grading-reference") / "1"), ["CPUExecutionProvider"])
    manifest = model.manifest
    side = decode_side(manifest)
    print(f"{args.photos} photos of {args.size} px; reduced decode keeps >= {side} px")
    print("seed  full ms  reduced ms  grade full/reduced  max |dp|")
    with tempfile.TemporaryDirectory() as scratch:
        for seed in range(args.photos):
            path = Path(scratch) / f"{seed}.jpg"
            path.write_bytes(jpeg_bytes(make_fundus(seed, size=args.size).rgb))
            timings, probabilities = [], []
            for min_side in (None, side):
                best = np.inf
                for _ in range(3):
                    started = time.perf_counter()
                    tensor = preprocess_fundus(load_photo(path, "jpeg", min_side=min_side), manifest.preprocessing)
                    best = min(best, time.perf_counter() - started)
                timings.append(best * 1000)
                logits = model.run({manifest.inputs[0].name: tensor[None]})[manifest.outputs[0].name][0]
                probabilities.append(activate(logits, manifest.decoding))
            full, reduced = probabilities
            print(f"{seed:4d}  {timings[0]:7.1f}  {timings[1]:10.1f}  {int(full.argmax()):>10d}/{int(reduced.argmax())}"
                  f"  {float(np.abs(full - reduced).max()):8.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
