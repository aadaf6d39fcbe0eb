"""Assemble a CT series into one volume in Hounsfield units, with its voxel-to-patient geometry.

Reusable by every CT task. Headers are read and checked by `app.imaging.ct_geometry` (the same code intake
ran, so a series that passed intake is assembled the same way here); pixels are then decoded in a thread
pool straight into one preallocated float32 volume, each slice converted with its own rescale slope and
intercept, so peak memory stays near one copy of the volume plus one slice per thread.

The volume's axes are (slice, row, column), slice 0 lowest along the slice normal; `geometry` maps voxel
(column, row, slice) to patient LPS millimetres and names every slice's SOPInstanceUID.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pydicom.pixels

from app.errors import BadInputError, UnsuitableInput
from app.imaging.ct_geometry import (
    SliceHeader,
    VolumeGeometry,
    group_series,
    plan_volume,
    read_instance_headers,
    select_series,
)

DEFAULT_DECODE_THREADS = min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class CTVolume:
    hu: np.ndarray  # float32, (slices, rows, columns)
    geometry: VolumeGeometry

    @property
    def series_instance_uid(self) -> str:
        return self.geometry.series_instance_uid

    @property
    def affine(self) -> np.ndarray:
        return self.geometry.affine

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """(column, row, slice) spacing in mm."""
        return self.geometry.spacing_mm

    @property
    def sop_instance_uids(self) -> list[str]:
        return self.geometry.sop_instance_uids

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.geometry.warnings


def read_ct_geometry(paths: Sequence[Path], series_instance_uid: str | None = None,
                     modalities: Sequence[str] = ("CT",), task: str = "this task",
                     threads: int | None = None) -> VolumeGeometry:
    files = [(Path(p), f"file #{i + 1}") for i, p in enumerate(paths)]
    try:
        headers = read_instance_headers(files, max_workers=threads or DEFAULT_DECODE_THREADS)
        series = select_series(group_series(headers), modalities, series_instance_uid, task)
        return plan_volume(series, modalities, task)
    except UnsuitableInput as exc:
        raise BadInputError(exc.detail) from exc


def load_ct_series(paths: Sequence[Path], series_instance_uid: str | None = None,
                   modalities: Sequence[str] = ("CT",), task: str = "this task",
                   threads: int | None = None) -> CTVolume:
    """Headers → checked geometry → HU volume. Raises BadInputError for anything unusable."""
    geometry = read_ct_geometry(paths, series_instance_uid, modalities, task, threads)
    return CTVolume(hu=decode_volume(geometry, threads), geometry=geometry)


def decode_volume(geometry: VolumeGeometry, threads: int | None = None) -> np.ndarray:
    volume = np.empty((geometry.n_slices, geometry.rows, geometry.columns), dtype=np.float32)
    # Single-frame files decode one per task; an enhanced instance decodes frame by frame in one task.
    by_file: dict[Path, list[tuple[int, SliceHeader]]] = defaultdict(list)
    for index, header in enumerate(geometry.slices):
        by_file[header.path].append((index, header))
    jobs = list(by_file.values())
    threads = threads or DEFAULT_DECODE_THREADS
    if threads <= 1 or len(jobs) == 1:
        for job in jobs:
            _decode_into(volume, job)
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for _ in pool.map(lambda job: _decode_into(volume, job), jobs):
                pass
    return volume


def _decode_into(volume: np.ndarray, targets: list[tuple[int, SliceHeader]]) -> None:
    first = targets[0][1]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if first.frame is None:
                ds = pydicom.dcmread(first.path, force=True)
                _store(volume, targets[0][0], ds.pixel_array, first)
                return
            wanted = {header.frame: (index, header) for index, header in targets}
            for frame, pixels in enumerate(pydicom.pixels.iter_pixels(first.path)):
                if frame in wanted:
                    index, header = wanted[frame]
                    _store(volume, index, pixels, header)
    except BadInputError:
        raise
    except Exception as exc:  # decoders raise many types on corrupt data; the job must fail cleanly
        raise BadInputError(f"{first.label}: pixel data could not be decoded ({type(exc).__name__})") from exc


def _store(volume: np.ndarray, index: int, pixels: np.ndarray, header: SliceHeader) -> None:
    if pixels.shape != volume.shape[1:]:
        raise BadInputError(
            f"{header.label}: pixel data is {pixels.shape[1]}x{pixels.shape[0]} but the series is "
            f"{volume.shape[2]}x{volume.shape[1]}"
        )
    target = volume[index]
    np.multiply(pixels, np.float32(header.rescale_slope), out=target, casting="unsafe")
    target += np.float32(header.rescale_intercept)
