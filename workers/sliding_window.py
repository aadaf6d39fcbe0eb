"""Sliding-window inference over the trailing axes of an array, patches blended with Gaussian weights.

Patches overlap by the manifest's `patch_overlap`, the last one flush with the far edge, and each pixel takes
the weighted mean of the patches over it. Weights fall off from a patch's centre (sigma = a quarter of the
patch, as nnU-Net and MONAI blend), because a network sees least context at a patch's border. An array
smaller than the patch is padded with `pad_value` (the HU window's floor, air, for CT) and cropped back.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np

from app.errors import ModelError


def window_starts(length: int, patch: int, overlap: float) -> list[int]:
    """First index of each patch along one axis: steps of patch x (1 - overlap), the last patch at the end."""
    if length <= patch:
        return [0]
    step = max(1, int(patch * (1 - overlap)))
    count = math.ceil((length - patch) / step) + 1
    return sorted({round(float(v)) for v in np.linspace(0, length - patch, count)})


def gaussian_weight(patch: tuple[int, ...]) -> np.ndarray:
    axes = [np.exp(-0.5 * ((np.arange(p) - (p - 1) / 2) / (p / 4)) ** 2) for p in patch]
    weight = axes[0]
    for axis in axes[1:]:
        weight = np.multiply.outer(weight, axis)
    return np.maximum(weight / weight.max(), 1e-3).astype(np.float32)


def patch_corners(spatial: tuple[int, ...], patch: tuple[int, ...], overlap: float) -> tuple[tuple[int, ...], list]:
    """The padded shape (at least a patch along each axis) and the first index of every patch in it."""
    if len(patch) != len(spatial):
        raise ModelError(f"a {len(patch)}-D patch {patch} cannot slide over {len(spatial)}-D inputs {spatial}")
    padded_shape = tuple(max(n, p) for n, p in zip(spatial, patch, strict=True))
    starts = (window_starts(n, p, overlap) for n, p in zip(padded_shape, patch, strict=True))
    return padded_shape, list(itertools.product(*starts))


def pad_to(items: np.ndarray, padded_shape: tuple[int, ...], pad_value: float) -> np.ndarray:
    """(N, C, *spatial) padded at the far end of each spatial axis to `padded_shape`."""
    spatial = tuple(items.shape[2:])
    if padded_shape == spatial:
        return items
    padded = np.full(items.shape[:2] + padded_shape, pad_value, np.float32)
    padded[(slice(None), slice(None)) + tuple(slice(0, n) for n in spatial)] = items
    return padded


def sliding_window(items: np.ndarray, patch: tuple[int, ...], overlap: float,
                   predict: Callable[[np.ndarray], np.ndarray], batch_size: int,
                   pad_value: float = 0.0) -> np.ndarray:
    """(N, C, *spatial) in, (N, K, *spatial) float32 out.

    `predict` takes a batch (B <= batch_size, C, *patch) of float32 and returns (B, K, *patch): probabilities,
    or anything else a weighted mean suits. Patches of all N items share runs.
    """
    spatial = tuple(items.shape[2:])
    padded_shape, corners = patch_corners(spatial, patch, overlap)
    padded = pad_to(items, padded_shape, pad_value)
    regions = [tuple(slice(start, start + p) for start, p in zip(corner, patch, strict=True)) for corner in corners]
    # One patch over the whole array: unit weights, so its prediction comes back exactly as it was.
    weight = gaussian_weight(patch) if len(regions) > 1 else np.ones(patch, np.float32)
    norm = np.zeros(padded_shape, np.float32)
    for region in regions:
        norm[region] += weight
    total = None
    jobs = [(n, region) for n in range(items.shape[0]) for region in regions]
    for first in range(0, len(jobs), batch_size):
        chunk = jobs[first: first + batch_size]
        batch = np.stack([padded[(n, slice(None)) + region] for n, region in chunk]).astype(np.float32, copy=False)
        out = predict(batch)
        if out.ndim != batch.ndim or out.shape[0] != len(chunk) or tuple(out.shape[2:]) != patch:
            raise ModelError(f"the model returned {out.shape} for a batch of {len(chunk)} patches of {patch}")
        if total is None:
            total = np.zeros((items.shape[0], out.shape[1], *padded_shape), np.float32)
        for (n, region), prediction in zip(chunk, out, strict=True):
            total[(n, slice(None)) + region] += prediction * weight
    total /= np.maximum(norm, 1e-6)
    return total[(slice(None), slice(None)) + tuple(slice(0, n) for n in spatial)]
