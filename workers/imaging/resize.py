"""Pillow's bicubic resize on two cores, pixel for pixel the same as one `Image.resize` call.

Pillow resamples in two separable passes: across the columns of every row, then down the rows of every
column. Every output row of the first pass depends on one input row only, and every output column of the
second on one intermediate column only, so each pass splits into bands that threads resample side by side
(Pillow releases the GIL while it resamples). The intermediate is 8-bit in Pillow's own two passes too, so
the result is identical, not merely close: a model sees the pixels it was trained on. For a lone job this
saves about 1 of the 3 ms a 600-px fundus crop costs to shrink to 224 px on one core. Under load both cores
are busy anyway, and the second band then only costs hand-offs (3 ms of the helper thread's CPU per DR job at
16 callers, `bench/cpu_budget.py`): while another job runs in the process (`workers.busy`), one call does it.

Only square to square. For other shapes Pillow does not always run the horizontal pass first (splitting a
300 x 300 image into bands of rows changed its pixels), so they go to one `Image.resize` call. For squares
the banded result matched one call at every side tried, 100 to 2,100 px, shrinking and enlarging, for the
sizes models use (tests/workers/imaging/test_resize.py).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from workers import busy

BICUBIC = Image.Resampling.BICUBIC
# Below this many source pixels the hand-offs cost more than the second core saves.
MIN_SPLIT_PIXELS = 256 * 256

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _forget_pool_after_fork() -> None:
    # A forked child (Celery's prefork pool, a multiprocessing pool) has none of the parent's threads: work
    # sent to the inherited executor would wait forever. The child starts its own when it first resizes.
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _bands() -> int:
    return min(2, os.cpu_count() or 1)


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(_bands() - 1, thread_name_prefix="medimg-resize")
        return _pool


def resize_bicubic(image: Image.Image | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` (or its uint8 pixels) resized to `size` (rows, columns) with Pillow's bicubic filter, which
    widens its support when shrinking (antialiasing); returns the pixels."""
    height, width = size
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if image.size == (width, height):
        return np.asarray(image)
    square = image.width == image.height and height == width
    if not square or _bands() < 2 or image.width * image.height < MIN_SPLIT_PIXELS or busy.others_running():
        return np.asarray(image.resize((width, height), resample=BICUBIC))
    across = _in_bands(image, (width, image.height), horizontal=True)  # each row across: 8-bit, as in Pillow
    return np.asarray(_in_bands(across, (width, height), horizontal=False))


def _in_bands(image: Image.Image, size: tuple[int, int], horizontal: bool) -> Image.Image:
    """One pass of the resize to `size`, bands of rows (horizontal) or of columns resampled side by side:
    the calling thread does the first band itself, the pool the others."""
    width, height = size
    cuts = _cuts(image.height if horizontal else width, _bands())

    def band(k: int) -> Image.Image:
        start, stop = cuts[k], cuts[k + 1]
        # The crop is a copy of the band alone: resized with a box instead, Pillow would also run the other
        # pass over it.
        if horizontal:
            return image.crop((0, start, image.width, stop)).resize((width, stop - start), resample=BICUBIC)
        return image.crop((start, 0, stop, image.height)).resize((stop - start, height), resample=BICUBIC)

    others = [_executor().submit(band, k) for k in range(1, len(cuts) - 1)]
    parts = [band(0)] + [future.result() for future in others]
    out = Image.new(image.mode, size)
    for start, part in zip(cuts, parts):
        out.paste(part, (0, start) if horizontal else (start, 0))
    return out


def _cuts(length: int, bands: int) -> list[int]:
    return [round(k * length / bands) for k in range(bands + 1)]
