"""Lanes of the embedded worker pool: which queued job a free worker thread runs next.

First come, first served let six CT volumes hold every thread while a fundus photo, a few milliseconds of
work, waited a minute behind them. Here each lane (a set of tasks) may hold at most its `max_threads`, so a
lane capped below the pool size always leaves threads to the others. A free thread goes to the lane whose
next job is urgent (STAT, or routine that has aged), then to the lane holding the fewest threads, then to the
lane with the oldest next job. Within a lane, jobs go by rank (`app.dispatch.priority.queue_rank`).
Micro-batching is unaffected: concurrent jobs of one model still share its session runs.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from dataclasses import dataclass, field

from app.config import Lane
from app.dispatch.priority import queue_rank
from app.metrics import LANE_QUEUED, LANE_RUNNING
from app.schemas.jobs import Job, JobPriority, QueuePosition
from app.schemas.tasks import TaskName


@dataclass(order=True)
class _Entry:
    rank: float
    sequence: int
    job_id: str = field(compare=False)
    priority: JobPriority = field(compare=False)


@dataclass
class _Lane:
    name: str
    max_threads: int
    waiting: list[_Entry] = field(default_factory=list)  # a heap by (rank, sequence)
    running: int = 0


def build_lanes(configured: list[Lane], threads: int) -> dict[TaskName, tuple[str, int]]:
    """Each task's lane name and thread cap; tasks in no configured lane get one of their own."""
    by_task: dict[TaskName, tuple[str, int]] = {}
    for lane in configured:
        for name in lane.tasks:
            try:
                task = TaskName(name)
            except ValueError:
                known = ", ".join(t.value for t in TaskName)
                raise ValueError(f"MEDIMG_EMBEDDED_LANES: lane {lane.name!r} names unknown task {name!r}; "
                                 f"tasks are {known}") from None
            if task in by_task:
                raise ValueError(f"MEDIMG_EMBEDDED_LANES: task {name!r} is in two lanes")
            by_task[task] = (lane.name, min(lane.max_threads or max(threads - 1, 1), threads))
    for task in TaskName:
        by_task.setdefault(task, (task.value, threads))
    return by_task


class LaneScheduler:
    def __init__(self, configured: list[Lane], threads: int, aging_seconds: float) -> None:
        self._task_lane = build_lanes(configured, threads)
        self._lanes = {name: _Lane(name, cap) for name, cap in set(self._task_lane.values())}
        self._aging = aging_seconds
        self._where: dict[str, tuple[_Lane, _Entry]] = {}
        self._sequence = itertools.count()
        self._changed = threading.Condition()
        self._closed = False

    def lane_of(self, task: TaskName) -> str:
        return self._task_lane[task][0]

    def put(self, job: Job) -> None:
        lane = self._lanes[self.lane_of(job.task)]
        entry = _Entry(queue_rank(job.priority, job.created_at, self._aging), next(self._sequence), job.id,
                       job.priority)
        with self._changed:
            if job.id in self._where:
                return  # already waiting (a resumed job submitted again)
            heapq.heappush(lane.waiting, entry)
            self._where[job.id] = (lane, entry)
            LANE_QUEUED.labels(lane.name, job.priority.value).inc()
            self._changed.notify()

    def take(self) -> tuple[str, str] | None:
        """Blocks until a job may run; returns (job id, lane name), or None once closed."""
        with self._changed:
            while True:
                if self._closed:
                    return None
                lane = self._next_lane()
                if lane is not None:
                    entry = heapq.heappop(lane.waiting)
                    del self._where[entry.job_id]
                    lane.running += 1
                    LANE_QUEUED.labels(lane.name, entry.priority.value).dec()
                    LANE_RUNNING.labels(lane.name).inc()
                    return entry.job_id, lane.name
                self._changed.wait()

    def _next_lane(self) -> _Lane | None:
        urgent_before = time.time() - self._aging  # a head ranked earlier is STAT, or routine that has aged
        open_lanes = [lane for lane in self._lanes.values() if lane.waiting and lane.running < lane.max_threads]
        if not open_lanes:
            return None
        return min(open_lanes, key=lambda lane: (lane.waiting[0].rank > urgent_before, lane.running,
                                                 lane.waiting[0].rank, lane.waiting[0].sequence))

    def done(self, lane_name: str) -> None:
        with self._changed:
            self._lanes[lane_name].running -= 1
            LANE_RUNNING.labels(lane_name).dec()
            self._changed.notify()

    def position(self, job_id: str) -> QueuePosition | None:
        with self._changed:
            found = self._where.get(job_id)
            if found is None:
                return None
            lane, entry = found
            ahead = sum(1 for other in lane.waiting if other < entry)
        return QueuePosition(lane=lane.name, position=ahead + 1, exact=True)

    def close(self) -> None:
        """Threads waiting in `take` return None; queued jobs stay queued in the store."""
        with self._changed:
            self._closed = True
            for lane in self._lanes.values():
                for entry in lane.waiting:
                    LANE_QUEUED.labels(lane.name, entry.priority.value).dec()
                lane.waiting.clear()
            self._where.clear()
            self._changed.notify_all()
