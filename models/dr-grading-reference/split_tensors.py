"""Model-ready tensors for a synthetic split: generate each image, then run the serving preprocessing on it.

Training and evaluation both come through here so that they see the pixels the serving pipeline would
produce (`workers.imaging.fundus.preprocess_fundus`), never a private re-implementation.
"""

from __future__ import annotations

import hashlib
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


def _sources_digest() -> str:
    """Cache key: the generator and the preprocessing code, so stale tensors are never reused."""
    digest = hashlib.sha256()
    for path in (HERE / "synthetic_fundus.py", REPO_ROOT / "workers/imaging/fundus.py"):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def cached_split(split: str, n: int, preprocessing: Preprocessing, use_cache: bool) -> tuple[np.ndarray, np.ndarray]:
    key = hashlib.sha256(f"{_sources_digest()}{preprocessing.model_dump_json()}".encode()).hexdigest()[:12]
    path = CACHE_DIR / f"{split}-{n}-{key}.npz"
    if use_cache and path.exists():
        with np.load(path) as data:
            return data["images"], data["grades"]
    images, grades = split_tensors(split, n, preprocessing)
    if use_cache:
        CACHE_DIR.mkdir(exist_ok=True)
        np.savez(path, images=images, grades=grades)
    return images, grades
