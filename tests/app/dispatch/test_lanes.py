"""Lanes of the embedded pool: CT never takes the last thread, STAT goes first, waiting routine work ages."""

from __future__ import annotations

import threading
from datetime import timedelta

from app.config import Lane
from app.dispatch.lanes import LaneScheduler
from app.schemas.jobs import Job, JobPriority, ModelRef, utcnow
from app.schemas.tasks import TaskName

CT, DR = TaskName.LUNG_NODULE_DETECTION, TaskName.DR_GRADING
DEFAULT_LANES = [Lane(name="ct", tasks=[CT.value, TaskName.COVID_LESION_SEGMENTATION.value])]
MODEL = ModelRef(id="m", version=1, sha256="0" * 64, research_use_only=True)


def job(name: str, task: TaskName = CT, priority: JobPriority = JobPriority.ROUTINE, age_seconds: float = 0) -> Job:
    return Job(id=name, task=task, model=MODEL, priority=priority, created_at=utcnow() - timedelta(seconds=age_seconds))


def take_all(lanes: LaneScheduler, free_threads: int = 4) -> list[str]:
    """What `take` hands out now to up to `free_threads` idle threads, without blocking."""
    taken = []
    while len(taken) < free_threads and lanes._next_lane() is not None:
        taken.append(lanes.take()[0])
    return taken


def test_take_ct_lane_leaves_a_thread_for_photos() -> None:
    lanes = LaneScheduler(DEFAULT_LANES, threads=4, aging_seconds=300)
    for index in range(6):
        lanes.put(job(f"ct{index}", age_seconds=10 - index))
    assert take_all(lanes) == ["ct0", "ct1", "ct2"]  # the fourth thread stays free
    lanes.put(job("dr", DR))
    assert take_all(lanes) == ["dr"]
    position = lanes.position("ct4")
    assert (position.lane, position.position, position.exact) == ("ct", 2, True)


def test_take_stat_goes_ahead_of_routine_but_aged_routine_is_not_overtaken() -> None:
    lanes = LaneScheduler(DEFAULT_LANES, threads=2, aging_seconds=60)  # the CT lane may hold one thread
    lanes.put(job("running", age_seconds=200))
    assert take_all(lanes) == ["running"]
    lanes.put(job("old-routine", age_seconds=120))  # waited longer than the aging allowance
    lanes.put(job("routine", age_seconds=30))
    lanes.put(job("stat", priority=JobPriority.STAT))
    assert [lanes.position(name).position for name in ("old-routine", "stat", "routine")] == [1, 2, 3]
    lanes.done("ct")
    assert take_all(lanes) == ["old-routine"]
    lanes.done("ct")
    assert take_all(lanes) == ["stat"]


def test_take_free_thread_goes_to_the_lane_holding_fewest() -> None:
    lanes = LaneScheduler([], threads=3, aging_seconds=300)  # every task a lane of its own, uncapped
    for index in range(3):
        lanes.put(job(f"ct{index}", age_seconds=100 - index))
        lanes.put(job(f"dr{index}", DR, age_seconds=10 - index))
    assert take_all(lanes, 3) == ["ct0", "dr0", "ct1"]  # older CT first, then the lane holding fewer threads
    lanes.done(TaskName.DR_GRADING.value)
    assert take_all(lanes, 1) == ["dr1"]


def test_close_releases_waiting_threads() -> None:
    lanes = LaneScheduler(DEFAULT_LANES, threads=1, aging_seconds=300)
    results = []
    waiter = threading.Thread(target=lambda: results.append(lanes.take()))
    waiter.start()
    lanes.close()
    waiter.join(5)
    assert results == [None]
