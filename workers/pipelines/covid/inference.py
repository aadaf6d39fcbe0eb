"""Slice-wise (2.5D) inference: each slice with its neighbours as channels (`workers.imaging.slice_stacks`),
run whole or as blended patches, probabilities resized back to the source grid; and the flipped re-runs whose
disagreement is the uncertainty map."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from app.errors import ModelError
from app.schemas.manifest import ModelManifest
from workers import uncertainty
from workers.decoding import activate
from workers.imaging.ct_series import CTVolume
from workers.imaging.slice_stacks import model_plane, model_slices, resize_plane, stack_neighbours
from workers.onnx import LoadedModel
from workers.sliding_window import sliding_window

DEFAULT_BATCH = 8


def onnx_runner(model: LoadedModel) -> Callable[[np.ndarray], np.ndarray]:
    input_name, output_name = model.manifest.inputs[0].name, model.manifest.outputs[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        return model.run({input_name: batch})[output_name]

    return run


def predict_labels(hu: np.ndarray, spacing_mm: tuple[float, float, float], manifest: ModelManifest,
                   run: Callable[[np.ndarray], np.ndarray], positions_mm: np.ndarray | None = None) -> np.ndarray:
    """Labels 0/1/2 on the source grid (uint8, same shape as `hu`): each voxel's most probable class."""
    labels = np.empty(hu.shape, np.uint8)
    for index, probability in slice_probabilities(hu, spacing_mm, manifest, run, positions_mm):
        labels[index] = np.argmax(probability, axis=0)
    return labels


def slice_probabilities(hu: np.ndarray, spacing_mm: tuple[float, float, float], manifest: ModelManifest,
                        run: Callable[[np.ndarray], np.ndarray],
                        positions_mm: np.ndarray | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(slice index, float32 class probabilities resized back to the slice's rows and columns), slice by slice,
    so that no caller need hold the probabilities of a whole volume.

    Each slice, with its neighbours as channels (`stack_neighbours`), is resized to the model's plane
    (`model_plane`), then run whole or, when the manifest gives `patch_size`, as overlapping patches blended
    back (`sliding_window`). `spacing_mm` is the series' (column, row, slice) spacing; `positions_mm` each
    slice's distance along the normal from slice 0 (None: evenly spaced at the slice spacing).
    """
    spec = manifest.preprocessing
    channels = int(manifest.inputs[0].shape[1])
    batch_size = spec.batch_size or DEFAULT_BATCH
    plane = model_plane(hu.shape[1:], spacing_mm, manifest)
    patch = tuple(int(v) for v in (spec.patch_size or plane))
    if len(patch) != 2:
        raise ModelError(f"{manifest.id}: patch_size {list(patch)} is not a 2-D patch for slice-wise inference")
    if positions_mm is None:
        positions_mm = np.arange(hu.shape[0], dtype=np.float64) * spacing_mm[2]
    n_classes = len(manifest.class_names)

    def predict(batch: np.ndarray) -> np.ndarray:
        logits = run(batch)
        if logits.shape[0] != batch.shape[0] or logits.shape[1] != n_classes:
            raise ModelError(f"the model returned {logits.shape} for a batch of {batch.shape[0]} inputs")
        return activate(logits, manifest.decoding, axis=1).astype(np.float32)

    small = model_slices(hu, manifest, plane)
    for first in range(0, hu.shape[0], batch_size):
        indices = np.arange(first, min(first + batch_size, hu.shape[0]))
        stacked = stack_neighbours(small, indices, channels, positions_mm, spec.slice_offsets_mm)
        probability = sliding_window(stacked, patch, spec.patch_overlap or 0.0, predict, batch_size)
        for offset, index in enumerate(indices):
            yield int(index), resize_plane(probability[offset], hu.shape[1:])



def lesion_disagreement(ct: CTVolume, raw: np.ndarray, manifest: ModelManifest,
                        run: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """uint8 per voxel: how many flipped copies of the series call lesion where the original did not, or the
    reverse; and the augmentation names, the original first. Compared before decoding, on the model's calls."""
    lesion = raw > 0
    disagreement = np.zeros(raw.shape, np.uint8)
    names = uncertainty.volume_augmentations(manifest.uncertainty)
    for name in names:
        flipped = predict_labels(uncertainty.unflip(ct.hu, name), ct.spacing_mm, manifest, run,
                                 ct.geometry.slice_positions_mm)
        disagreement += lesion != (uncertainty.unflip(flipped, name) > 0)
    return disagreement, [uncertainty.ORIGINAL, *names]

