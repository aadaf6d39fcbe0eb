"""Model-ready tensors for a synthetic split: generate each image, then run the serving preprocessing on it.

Training and evaluation both come through here so that they see the pixels the serving pipeline would
produce (`workers.imaging.fundus.preprocess_fundus`), never a private re-implementation.
"""

from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
for _path in (str(REPO_ROOT), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import synthetic_fundus  # noqa: E402
from app.schemas.manifest import Preprocessing  # noqa: E402
from workers.imaging.fundus import preprocess_fundus  # noqa: E402


def _one(job: tuple[str, int, str]) -> tuple[np.ndarray, int]:
    split, index, preprocessing_json = job
    preprocessing = Preprocessing.model_validate_json(preprocessing_json)
    item = synthetic_fundus.split_item(split, index)
    # float16 halves the memory of a precomputed training set; its 1e-3 relative error is far below
    # the JPEG noise already in the images.
    return preprocess_fundus(item.rgb, preprocessing).astype(np.float16), item.grade


def split_tensors(split: str, n: int, preprocessing: Preprocessing, workers: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(images float16 NxCxHxW, grades int64 N) for the first n images of a split."""
    jobs = [(split, index, preprocessing.model_dump_json()) for index in range(n)]
    if workers > 1:
        # fork keeps start-up cheap and needs no importable __main__.
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.map(_one, jobs, chunksize=16)
    else:
        results = [_one(job) for job in jobs]
    images = np.stack([image for image, _ in results])
    grades = np.array([grade for _, grade in results], dtype=np.int64)
    return images, grades
