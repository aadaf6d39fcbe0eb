"""Hands out exports that are due, and keeps each destination's reachability for /readyz.

Runs in the gateway, in both modes. Embedded, it hands each due export to a small pool of sender threads;
in Celery mode it sends a `medimg.export` task to the `exports` queue, and workers send. Retries wait in the
store (a due time per record), not in any process's memory, so a restart loses none; an export handed out
whose attempt never began (a lost message) is handed out again after the attempt lease.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from app.export.outbox import ExportOutbox
from app.export.senders import sender_for

log = logging.getLogger(__name__)


class ExportScheduler:
    def __init__(self, outbox: ExportOutbox) -> None:
        self.outbox = outbox
        self.settings = outbox.settings
        self._stop = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._handed_out: dict[tuple[str, str], tuple[float, float]] = {}  # -> (its due_at, when handed out)
        self._reachability: dict[str, dict] = {}

    def start(self) -> None:
        if not self.settings.export_destinations:
            return
        if self.outbox.kick is None:  # embedded: this process sends
            self._pool = ThreadPoolExecutor(2, thread_name_prefix="medimg-export")
        threading.Thread(target=self._hand_out_loop, name="medimg-export-scheduler", daemon=True).start()
        threading.Thread(target=self._probe_loop, name="medimg-export-probe", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # --- handing out ---------------------------------------------------------------------------------

    def _hand_out_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.hand_out_due()
            except Exception as exc:  # the store may be restarting; the next round tries again
                log.warning("export scheduler: %s; retrying", type(exc).__name__)
                self._stop.wait(self.settings.export_poll_seconds)
            self.outbox.store.wait_added(self.settings.export_poll_seconds)

    def hand_out_due(self) -> int:
        now = time.time()
        handed = 0
        for job_id, destination, due_at in self.outbox.store.due(now):
            key = (job_id, destination)
            previous = self._handed_out.get(key)
            # Handed out already at this due time, and its attempt has not begun yet: give it the lease's time.
            if previous and previous[0] == due_at and now - previous[1] < self.outbox.lease_seconds:
                continue
            self._handed_out[key] = (due_at, now)
            if self._pool is not None:
                self._pool.submit(self._deliver, job_id, destination)
            else:
                self.outbox.kick(job_id, destination)
            handed += 1
        if len(self._handed_out) > 10_000:
            self._handed_out = {k: v for k, v in self._handed_out.items() if now - v[1] < self.outbox.lease_seconds}
        return handed

    def _deliver(self, job_id: str, destination: str) -> None:
        try:
            self.outbox.deliver(job_id, destination)
        except Exception:
            log.exception("job %s: export to %s: the sender itself failed", job_id, destination)

    # --- reachability --------------------------------------------------------------------------------

    def _probe_loop(self) -> None:
        while not self._stop.is_set():
            for destination in self.settings.export_destinations:
                try:
                    result = sender_for(destination, min(self.settings.export_timeout_seconds, 10)).probe()
                    reachable, detail = result.reachable, result.detail
                except Exception as exc:
                    reachable, detail = False, f"probe failed ({type(exc).__name__})"
                self._reachability[destination.name] = {
                    "kind": destination.kind, "reachable": reachable, "detail": detail,
                    "checked_at": datetime.now(UTC).isoformat(timespec="seconds")}
            self._stop.wait(self.settings.export_probe_seconds)

    def reachability(self) -> dict[str, dict]:
        """Each destination's last probe; destinations not probed yet say so. Never makes the service unready."""
        return {d.name: self._reachability.get(d.name, {"kind": d.kind, "reachable": None,
                                                         "detail": "not probed yet"})
                for d in self.settings.export_destinations}
