"""COVID lesion test factories: synthetic chest CT with known lesion masks, from the reference model's generator."""

from __future__ import annotations

from types import ModuleType

import numpy as np

from devkit.reference_models import load_reference_module

COVID_MODEL_ID = "covid-lesion-segmentation-reference"


def synthetic_covid() -> ModuleType:
    return load_reference_module(COVID_MODEL_ID, "synthetic_covid")


def covid_case(seed: int, matrix: int = 128, slice_spacing: float = 5.0, orientation: str = "HFS",
               n_lesions: int | None = None, noise_hu: float | None = 15.0):
    """A whole-chest synthetic scan; lesions random unless `n_lesions` is 0."""
    return synthetic_covid().simulate_case(np.random.default_rng(seed), matrix=matrix, slice_spacing=slice_spacing,
                                           orientation=orientation, n_lesions=n_lesions, noise_hu=noise_hu)


def held_out_case(index: int):
    """Scan `index` of the model's test split (never trained on), drawn as `train.py` draws its scans."""
    return load_reference_module(COVID_MODEL_ID, "train").make_case("test", index)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total
