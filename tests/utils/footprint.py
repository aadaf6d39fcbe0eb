"""What one request costs the service: peak memory of its process, bytes on disk in given folders, seconds.

Peak memory is the process's VmHWM, reset before the request (`/proc/<pid>/clear_refs`, Linux 4.0+), so an
earlier test's peak does not hide this one's. Disk use is sampled every 10 ms while the request runs.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Footprint:
    baseline_rss_mb: float = 0.0
    peak_rss_mb: float = 0.0
    peak_disk_bytes: int = 0
    seconds: float = 0.0

    @property
    def rss_growth_mb(self) -> float:
        return self.peak_rss_mb - self.baseline_rss_mb


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _bytes_under(folders: list[Path]) -> int:
    total = 0
    for folder in folders:
        for root, _, files in os.walk(folder):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_size
                except OSError:
                    pass
    return total


@contextmanager
def footprint(pid: int, folders: list[Path]) -> Iterator[Footprint]:
    result = Footprint()
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current resident size
    result.baseline_rss_mb = _status_kb(pid, "VmRSS") / 1024
    already = _bytes_under(folders)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            result.peak_disk_bytes = max(result.peak_disk_bytes, _bytes_under(folders) - already)
            stop.wait(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        yield result
    finally:
        result.seconds = time.monotonic() - started
        stop.set()
        sampler.join()
        result.peak_rss_mb = _status_kb(pid, "VmHWM") / 1024


def files_held(folders: list[Path]) -> set[Path]:
    """Every file under `folders` but the logs: what a refused request must not add to."""
    return {path for folder in folders for path in folder.rglob("*")
            if path.is_file() and "logs" not in path.relative_to(folder).parts}
