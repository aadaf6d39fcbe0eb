"""CT test factories: DICOM series written by the lung-nodule reference phantom's writer, as files or a ZIP."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from types import ModuleType

import numpy as np

from devkit.reference_models import load_reference_module

LUNG_MODEL_ID = "lung-nodule-reference"


def synthetic_ct() -> ModuleType:
    return load_reference_module(LUNG_MODEL_ID, "synthetic_ct")


def ramp_volume(n_slices: int = 6, rows: int = 32, columns: int = 40) -> np.ndarray:
    """HU that tell every slice, row and column apart: slice s is -1000 + 100 s, plus row and column ramps."""
    s, r, c = np.meshgrid(np.arange(n_slices), np.arange(rows), np.arange(columns), indexing="ij")
    return (-1000.0 + 100.0 * s + 2.0 * r + 0.5 * np.round(c)).astype(np.float32)


def small_grid(n_slices: int = 6, rows: int = 32, columns: int = 40, pixel_spacing: float = 0.7,
               slice_spacing: float = 2.5, orientation: str = "HFS", centre=(10.0, -20.0, 50.0),
               rotation_deg: float = 0.0):
    sc = synthetic_ct()
    return sc.grid_around(centre, columns, pixel_spacing, n_slices, slice_spacing, orientation, rotation_deg,
                          rows=rows)


def write_series(directory: Path, hu: np.ndarray, grid, **kwargs) -> list[Path]:
    return synthetic_ct().write_ct_series(hu, grid, directory, **kwargs)


def zip_bytes(paths: list[Path], shuffle_seed: int | None = 0) -> bytes:
    """A ZIP of the files, members in a shuffled order under meaningless names."""
    order = list(range(len(paths)))
    if shuffle_seed is not None:
        np.random.default_rng(shuffle_seed).shuffle(order)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for rank, index in enumerate(order):
            archive.write(paths[index], f"DICOM/IM{rank:05d}")
    return buffer.getvalue()


def nodule_scan(seed: int = 7, matrix: int = 256, pixel_spacing: float = 0.7, slice_spacing: float = 2.5,
                orientation: str = "HFS", diameters=(6.5, 9.0, 14.0, 22.0), z_extent_mm: float = 120.0,
                noise_hu: float = 15.0):
    """A synthetic chest CT with nodules of the given diameters (targeted FOV over one lung at 256 x 256)."""
    sc = synthetic_ct()
    return sc.simulate_scan(np.random.default_rng(seed), matrix=matrix, pixel_spacing=pixel_spacing,
                            slice_spacing=slice_spacing, orientation=orientation, rotation_deg=0.0,
                            z_extent_mm=z_extent_mm, nodule_diameters=list(diameters), noise_hu=noise_hu)
