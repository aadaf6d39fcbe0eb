"""Micro-batching: concurrent `run` calls on one model share a single `session.run`.

The first caller to find a run slot free becomes a leader: it waits at most `max_wait` for company (or
until `max_rows` rows are pending), runs its own rows and those of the oldest waiting callers as one batch
along axis 0, and hands each caller its own slice of the outputs. Under load, callers that arrive while a
batch runs form the next one, so batches grow with the load without anyone waiting when the service is idle
(`max_wait` 0). A leader runs one batch, then hands the lead to the oldest waiting caller: a leader that ran
batch after batch would hold its own job back for as long as the load lasted (the latency tail this once
caused). Calls whose non-batch shapes differ from the leader's run in a batch of their own.

Calls made under `urgent_calls(True)` (a STAT job's, set by the runner) are handed the lead and joined into
batches before routine ones, so a STAT job sharing a model with routine jobs is not slowed to their pace.

Up to `max_parallel` batches run at once, each led by its own caller, like a Triton model with that many
instances: on a CPU, single-threaded sessions run side by side keep every core busy without the stalls a
multi-threaded run suffers when other work takes one of its threads' cores.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import numpy as np

Feeds = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]
_URGENT: ContextVar[bool] = ContextVar("medimg_urgent_calls", default=False)


@contextmanager
def urgent_calls(urgent: bool) -> Iterator[None]:
    """Model runs requested inside this block (in this thread) go before routine ones."""
    token = _URGENT.set(urgent)
    try:
        yield
    finally:
        _URGENT.reset(token)


@dataclass(eq=False)  # identity: list.remove must never compare the arrays inside
class _Pending:
    feeds: Feeds
    rows: int
    signature: tuple
    urgent: bool = False
    wake: threading.Event = field(default_factory=threading.Event)  # finished, or handed the lead
    finished: bool = False
    leads: bool = False
    outputs: Outputs | None = None
    error: BaseException | None = None


def _signature(feeds: Feeds) -> tuple:
    return tuple((name, array.shape[1:], array.dtype.str) for name, array in sorted(feeds.items()))


class MicroBatcher:
    def __init__(self, run_batch: Callable[[Feeds], Outputs], max_rows: int, max_wait_seconds: float,
                 max_parallel: int = 1) -> None:
        self._run_batch = run_batch
        self.max_rows = max_rows
        self.max_wait = max_wait_seconds
        self.max_parallel = max_parallel
        self._pending: list[_Pending] = []
        self._lock = threading.Condition()
        self._leaders = 0

    def run(self, feeds: Feeds) -> Outputs:
        rows = next(iter(feeds.values())).shape[0]
        item = _Pending(feeds, rows, _signature(feeds), urgent=_URGENT.get())
        with self._lock:
            self._pending.append(item)
            self._lock.notify_all()
            if self._leaders < self.max_parallel:
                self._leaders += 1
                item.leads = True
        while not item.finished:
            if item.leads:
                self._lead_once(item)  # a leader's own call is always in the batch it runs
            else:
                item.wake.wait()
                item.wake.clear()
        if item.error is not None:
            raise item.error
        return item.outputs

    def _lead_once(self, leader: _Pending) -> None:
        try:
            with self._lock:
                deadline = time.monotonic() + self.max_wait
                while self._rows_for(leader) < self.max_rows and (left := deadline - time.monotonic()) > 0:
                    self._lock.wait(left)
                batch = self._take_batch(leader)
            self._execute(batch)
        finally:
            with self._lock:
                waiting = self._by_urgency(item for item in self._pending if not item.leads)
                successor = waiting[0] if waiting else None
                if successor is not None:
                    successor.leads = True
                    successor.wake.set()
                else:
                    self._leaders -= 1

    def _joinable(self, leader: _Pending) -> list[_Pending]:
        """Waiting calls that may join the leader's batch, urgent then oldest first: same shapes, not leading."""
        return self._by_urgency(item for item in self._pending
                                if item is not leader and not item.leads and item.signature == leader.signature)

    @staticmethod
    def _by_urgency(items) -> list[_Pending]:
        return sorted(items, key=lambda item: not item.urgent)  # stable: oldest first within each kind

    def _rows_for(self, leader: _Pending) -> int:
        return leader.rows + sum(item.rows for item in self._joinable(leader))

    def _take_batch(self, leader: _Pending) -> list[_Pending]:
        batch, rows = [leader], leader.rows
        for item in self._joinable(leader):
            if rows + item.rows <= self.max_rows:
                batch.append(item)
                rows += item.rows
        for item in batch:
            self._pending.remove(item)
        return batch

    def _execute(self, batch: list[_Pending]) -> None:
        try:
            if len(batch) == 1:
                outputs = self._run_batch(batch[0].feeds)
                batch[0].outputs = outputs
            else:
                joined = {name: np.concatenate([item.feeds[name] for item in batch]) for name in batch[0].feeds}
                outputs = self._run_batch(joined)
                start = 0
                for item in batch:
                    item.outputs = {name: value[start : start + item.rows] for name, value in outputs.items()}
                    start += item.rows
        except BaseException as exc:  # every caller of the batch hears of the failure
            for item in batch:
                item.error = exc
        finally:
            for item in batch:
                item.finished = True
                item.wake.set()
