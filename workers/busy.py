"""How many jobs this process is running at this moment.

Code that could spread one job over the cores (the banded resize, `workers/imaging/resize.py`) does so only while
no other job runs beside it: under load every core already holds a job, and handing half of a resize to a
helper thread then buys no wall time, only hand-offs and a queue behind the other jobs' bands.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_running = 0


@contextmanager
def job_running() -> Iterator[None]:
    """Counts the calling job as running for the duration of the block."""
    global _running
    with _lock:
        _running += 1
    try:
        yield
    finally:
        with _lock:
            _running -= 1


def running_jobs() -> int:
    return _running


def others_running() -> bool:
    """True when a job other than the caller's runs in this process (a read without the lock: a hint)."""
    return _running > 1
