"""CT slices for people to look at: a lung window mapped to 8-bit grey, and one PNG per slice of a series.

The per-slice PNGs (artifacts `slice-<index:04d>.png`, index as in the results: the series sorted along the slice
normal, at the series' own matrix) let the review page at /ui, or any viewer, scroll through the series and draw
a task's masks and markers over it without reading DICOM.
"""

from __future__ import annotations

import io

import numpy as np

LUNG_WINDOW_HU = (-1350.0, 150.0)  # level -600, width 1500
# zlib level 1: these are previews, re-made from the series at will; level 3 costs more and saves little on CT.
DISPLAY_PNG_LEVEL = 1


def lung_window(hu: np.ndarray, window: tuple[float, float] = LUNG_WINDOW_HU) -> np.ndarray:
    """HU mapped linearly onto 0..255 (float32, clipped) across `window`."""
    low, high = window
    return np.clip((hu - low) * (255.0 / (high - low)), 0, 255).astype(np.float32)


def display_slice_name(index: int) -> str:
    return f"slice-{index:04d}.png"


def display_slice_png(hu_slice: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(lung_window(hu_slice).astype(np.uint8)).save(buffer, format="PNG", compress_level=DISPLAY_PNG_LEVEL)
    return buffer.getvalue()


def display_slices(hu: np.ndarray) -> list[tuple[str, bytes]]:
    """(name, PNG) for every slice of a (slices, rows, columns) HU volume."""
    return [(display_slice_name(index), display_slice_png(hu[index])) for index in range(hu.shape[0])]
