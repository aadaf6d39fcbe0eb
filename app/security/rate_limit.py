"""A token bucket per caller: `rate_per_minute` requests a minute, bursts up to the same number.

Buckets live in the gateway process; with several gateway replicas each enforces the limit on the
requests it sees, so put the ingress's own limit in front for a cluster-wide cap.
"""

from __future__ import annotations

import math
import threading
import time


MAX_BUCKETS = 100_000


class RateLimiter:
    def __init__(self, rate_per_minute: int) -> None:
        self.rate_per_minute = rate_per_minute
        self.capacity = float(rate_per_minute)
        self.refill_per_second = rate_per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def acquire(self, caller: str, count: int = 1) -> float:
        """0 when `count` requests may proceed (and are counted); otherwise the seconds until they may."""
        now = time.monotonic()
        with self._lock:
            if len(self._buckets) > MAX_BUCKETS:  # one per client address too: forget the full (idle) ones
                self._buckets = {k: v for k, v in self._buckets.items()
                                 if v[0] + (now - v[1]) * self.refill_per_second < self.capacity}
            tokens, updated = self._buckets.get(caller, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - updated) * self.refill_per_second)
            if tokens >= count:
                self._buckets[caller] = (tokens - count, now)
                return 0.0
            self._buckets[caller] = (tokens, now)
            return (count - tokens) / self.refill_per_second


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
