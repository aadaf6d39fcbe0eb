"""A token bucket per caller: `rate_per_minute` requests a minute, bursts up to the same number.

Buckets live in the gateway process; with several gateway replicas each enforces the limit on the
requests it sees, so put the ingress's own limit in front for a cluster-wide cap.
"""

from __future__ import annotations

import math
import threading
import time


class RateLimiter:
    def __init__(self, rate_per_minute: int) -> None:
        self.capacity = float(rate_per_minute)
        self.refill_per_second = rate_per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def acquire(self, caller: str) -> float:
        """0 when the request may proceed; otherwise the seconds until it may."""
        now = time.monotonic()
        with self._lock:
            tokens, updated = self._buckets.get(caller, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - updated) * self.refill_per_second)
            if tokens >= 1.0:
                self._buckets[caller] = (tokens - 1.0, now)
                return 0.0
            self._buckets[caller] = (tokens, now)
            return (1.0 - tokens) / self.refill_per_second


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
