"""Model-ready tensors for a synthetic split: generate each image, then run the serving preprocessing on it.

Training and evaluation both come through here so that they see the pixels the serving pipeline would
produce (`workers.imaging.fundus.preprocess_fundus`), never a private re-implementation.
"""

from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # the checkout's code, not an installed copy
    sys.path.insert(0, str(REPO_ROOT))

from workers.evaluation.model_scripts import ModelFolder, sources_digest  # noqa: E402

HERE = ModelFolder.of_script(__file__).path

import synthetic_fundus  # noqa: E402
from app.schemas.manifest import Preprocessing  # noqa: E402
from workers.evaluation.model_folders import model_folder_module  # noqa: E402
from workers.imaging.fundus import preprocess_fundus  # noqa: E402

EXTERNAL = "external"  # the split name of external_fundus.py's independently generated set

CACHE_DIR = HERE / "data"  # git-ignored (models/*/data/)


def _one(job: tuple[str, int, str]) -> tuple[np.ndarray, int]:
    split, index, preprocessing_json = job
    preprocessing = Preprocessing.model_validate_json(preprocessing_json)
    if split == EXTERNAL:
        item = model_folder_module("dr-grading-reference", "external_fundus").external_item(index)
    else:
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


def cached_split(split: str, n: int, preprocessing: Preprocessing, use_cache: bool) -> tuple[np.ndarray, np.ndarray]:
    # Keyed by the generator, the preprocessing code and settings.
    key = sources_digest((HERE / "synthetic_fundus.py", REPO_ROOT / "workers/imaging/fundus.py"),
                         preprocessing.model_dump_json())
    path = CACHE_DIR / f"{split}-{n}-{key}.npz"
    if use_cache and path.exists():
        with np.load(path) as data:
            return data["images"], data["grades"]
    images, grades = split_tensors(split, n, preprocessing)
    if use_cache:
        CACHE_DIR.mkdir(exist_ok=True)
        np.savez(path, images=images, grades=grades)
    return images, grades
