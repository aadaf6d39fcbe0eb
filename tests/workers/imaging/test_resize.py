"""The two-core bicubic resize gives exactly Pillow's pixels, so a model sees what it was trained on."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from app.model_repository import ModelRepository
from devkit.fundus import make_fundus
from devkit.reference_models import MODELS_DIR
from workers import busy
from workers.imaging import resize
from workers.imaging.fundus import preprocess_fundus
from workers.imaging.resize import resize_bicubic


def pillow_resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize(size[::-1], resample=Image.Resampling.BICUBIC))


@pytest.mark.parametrize("target", [128, 224, 299, 380, 512])
def test_square_resize_is_pillows_pixel_for_pixel_at_every_side(target: int) -> None:
    rng = np.random.default_rng(target)
    # Random noise has no smooth regions that could hide a wrong filter tap; shrinking and enlarging both.
    for side in list(range(100, 1100, 9)) + [1536, 2048, 2100]:
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        assert np.array_equal(resize_bicubic(pixels, (target, target)), pillow_resize(pixels, (target, target))), side


def test_split_runs_when_it_should(monkeypatch) -> None:
    """The equality above must be about the banded passes, not a silent fallback to one Pillow call."""
    calls = []
    monkeypatch.setattr(resize, "_in_bands", lambda *args, **kwargs: calls.append(args) or Image.new("RGB", (8, 8)))
    monkeypatch.setattr(resize, "_bands", lambda: 2)
    resize_bicubic(np.zeros((600, 600, 3), np.uint8), (224, 224))
    assert len(calls) == 2  # the horizontal pass, then the vertical one


def test_no_split_while_another_job_runs_in_the_process(monkeypatch) -> None:
    """Under load every core holds a job: one Pillow call, the same pixels, and the helper thread left alone;
    the split comes back once the job runs alone again."""
    calls = []
    real_in_bands = resize._in_bands
    monkeypatch.setattr(resize, "_in_bands", lambda *args, **kwargs: calls.append(args) or real_in_bands(*args, **kwargs))
    monkeypatch.setattr(resize, "_bands", lambda: 2)
    pixels = np.random.default_rng(1).integers(0, 256, (600, 600, 3), dtype=np.uint8)
    with busy.job_running(), busy.job_running():  # this job and another one
        assert busy.others_running()
        alongside = resize_bicubic(pixels, (224, 224))
    assert calls == [] and np.array_equal(alongside, pillow_resize(pixels, (224, 224)))
    with busy.job_running():
        assert not busy.others_running()
        alone = resize_bicubic(pixels, (224, 224))
    assert len(calls) == 2 and np.array_equal(alone, alongside)
    assert busy.running_jobs() == 0


@pytest.mark.parametrize("shape,size", [((600, 500, 3), (224, 224)), ((600, 600, 3), (224, 112)),
                                        ((600, 600), (224, 224))])
def test_other_shapes_and_grey_match_pillow(shape, size) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    assert np.array_equal(resize_bicubic(pixels, size), pillow_resize(pixels, size))


def test_fundus_tensors_are_unchanged_by_the_faster_preprocessing() -> None:
    """The served tensor, computed the plain way: float32 pixels, normalised per pixel, one Pillow resize."""
    from workers.imaging.fundus import crop_to_retina

    preprocessing = ModelRepository(MODELS_DIR).get("dr-grading-reference").manifest.preprocessing
    norm = preprocessing.normalization
    for seed in range(6):
        rgb = make_fundus(seed).rgb
        fitted = pillow_resize(crop_to_retina(rgb), preprocessing.target_size).astype(np.float32)
        expected = ((fitted * np.float32(norm.scale) - np.asarray(norm.mean, np.float32))
                    / np.asarray(norm.std, np.float32)).transpose(2, 0, 1)
        served = preprocess_fundus(rgb, preprocessing)
        assert served.dtype == np.float32 and served.flags.c_contiguous
        assert np.array_equal(served, expected)


def test_a_forked_child_resizes_without_the_parents_threads() -> None:
    """Celery's prefork pool and the training scripts' multiprocessing pools fork after the parent resized."""
    import multiprocessing

    pixels = np.random.default_rng(2).integers(0, 256, (600, 600, 3), dtype=np.uint8)
    expected = resize_bicubic(pixels, (224, 224))  # the parent's pool now has its thread
    with multiprocessing.get_context("fork").Pool(1) as pool:
        result = pool.apply_async(resize_bicubic, (pixels, (224, 224))).get(timeout=60)
    assert np.array_equal(result, expected)
