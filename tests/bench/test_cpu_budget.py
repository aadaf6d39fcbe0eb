"""bench/cpu_budget.py reads per-thread CPU from /proc: a thread that burns CPU shows up under its name."""

from __future__ import annotations

import os
import threading
import time

from bench.cpu_budget import by_thread_name, machine_seconds, process_seconds, task_seconds


def _burn(seconds: float) -> None:
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


def test_a_busy_thread_is_charged_to_its_name_and_an_idle_one_to_nothing() -> None:
    pid = os.getpid()
    names: dict[int, str] = {}
    ready, go, done = threading.Barrier(3), threading.Event(), threading.Event()
    burnt = threading.Barrier(3)

    def worker(seconds: float) -> None:
        names[threading.get_native_id()] = threading.current_thread().name
        ready.wait()
        go.wait()
        _burn(seconds)
        burnt.wait()
        done.wait()  # a thread that has ended is gone from /proc: keep it until read

    threads = [threading.Thread(target=worker, args=(0.4,), name="burner"),
               threading.Thread(target=worker, args=(0.0,), name="sleeper")]
    for thread in threads:
        thread.start()
    ready.wait()
    before, process_before, (busy_before, _) = task_seconds(pid), process_seconds(pid), machine_seconds()
    go.set()
    burnt.wait(timeout=30)  # however loaded the machine, the burner has had its 0.4 s of CPU
    after, process_after, (busy_after, _) = task_seconds(pid), process_seconds(pid), machine_seconds()
    done.set()
    for thread in threads:
        thread.join()
    spent = by_thread_name(before, after, names)
    assert 0.38 <= spent["burner"] <= 0.6
    assert spent["sleeper"] < 0.05
    assert process_after - process_before >= spent["burner"] - 0.02  # the whole process counts it too
    assert busy_after - busy_before >= 0.3
