"""Sliding-window inference: patches cover every pixel, the blend is a weighted mean, runs stay in their batch."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.errors import ModelError
from workers.sliding_window import sliding_window, window_starts


@given(length=st.integers(1, 700), patch=st.integers(1, 200), overlap=st.floats(0.0, 0.9))
def test_window_starts_cover_the_axis_with_the_last_patch_at_the_end(length: int, patch: int, overlap: float) -> None:
    starts = window_starts(length, patch, overlap)

    assert starts[0] == 0 and starts[-1] == max(length - patch, 0)
    gaps = np.diff(starts)
    assert (gaps > 0).all() and (gaps <= max(1, int(patch * (1 - overlap))) + 1).all()


@pytest.mark.parametrize("spatial, patch", [((50, 68), (64, 64)), ((130, 97), (64, 48)), ((20, 45, 33), (16, 32, 32))])
def test_a_pointwise_model_gives_the_same_map_as_one_whole_run(spatial, patch) -> None:
    """Overlaps are blended as a weighted mean, so a model whose output at a pixel depends on that pixel alone
    gives the same map however the patches fall; padded margins are cropped off."""
    rng = np.random.default_rng(1)
    items = rng.uniform(0, 1, (3, 2, *spatial)).astype(np.float32)
    runs = []

    def predict(batch: np.ndarray) -> np.ndarray:  # 2 channels in, 3 "classes" out
        runs.append(batch.shape)
        return np.stack([batch[:, 0] * 2, batch[:, 1] - batch[:, 0], np.sqrt(batch[:, 1])], axis=1)

    out = sliding_window(items, patch, 0.5, predict, batch_size=5)

    expected = np.stack([items[:, 0] * 2, items[:, 1] - items[:, 0], np.sqrt(items[:, 1])], axis=1)
    assert out.shape == expected.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert all(shape[0] <= 5 and shape[2:] == patch for shape in runs)
    per_item = np.prod([len(window_starts(max(n, p), p, 0.5)) for n, p in zip(spatial, patch)])
    assert sum(shape[0] for shape in runs) == 3 * per_item  # every item's patches, each once


def test_overlapping_patches_weigh_a_patch_centre_over_a_neighbours_border() -> None:
    """Where two patches overlap, a pixel nearer one patch's centre takes more of that patch's prediction."""
    items = np.zeros((1, 1, 1, 96), np.float32)
    calls = iter(range(100))

    def predict(batch: np.ndarray) -> np.ndarray:  # each patch predicts its own number everywhere
        return np.stack([np.full(batch.shape[1:], next(calls), np.float32) for _ in batch])

    out = sliding_window(items, (1, 64), 0.5, predict, batch_size=1)[0, 0, 0]  # patches at 0 and 32

    assert out[0] == pytest.approx(0.0) and out[-1] == pytest.approx(1.0)
    assert out[40] < 0.5 < out[55]  # left of the overlap's middle (47.5) patch 0 leads, right of it patch 1
    assert np.all(np.diff(out[32:64]) > 0)


def test_a_model_returning_the_wrong_patch_shape_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="patches of"):
        sliding_window(np.zeros((1, 1, 80, 80), np.float32), (64, 64), 0.25, lambda batch: batch[..., :32], 4)
    with pytest.raises(ModelError, match="cannot slide"):
        sliding_window(np.zeros((1, 1, 80, 80), np.float32), (64, 64, 64), 0.25, lambda batch: batch, 4)
