"""`medimg dicom-listener`: a pynetdicom C-STORE SCP that turns received series into jobs.

Instances are written to a per-series folder as they arrive (any storage SOP class, compressed transfer
syntaxes included). A series that has been quiet for MEDIMG_DIMSE_QUIET_SECONDS is complete: it goes
through the same Intake as an HTTP upload, with the task from `--task` or the routing rules (which may also
match the calling AE title, and set the priority), and the folder is removed whether the series was accepted
or refused. Identifiers are never logged.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, _config, evt

from app.config import Settings
from app.errors import MedimgError
from app.intake.routing import route, rule_keywords
from app.intake.service import Intake
from app.schemas.jobs import JobPriority
from app.schemas.tasks import TaskName

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000


@dataclass
class PendingSeries:
    folder: Path
    header: pydicom.Dataset
    calling_ae: str
    last_received: float = field(default_factory=time.monotonic)


class SeriesCollector:
    def __init__(self, intake: Intake, settings: Settings, task: TaskName | None) -> None:
        self.intake = intake
        self.settings = settings
        self.task = task
        self.root = settings.data_dir / "dimse"
        self.root.mkdir(parents=True, exist_ok=True)
        self._series: dict[str, PendingSeries] = {}
        self._lock = threading.Lock()
        self.job_ids: list[str] = []

    def handle_store(self, event) -> int:
        try:
            dataset = event.dataset
            dataset.file_meta = event.file_meta
            series_uid = str(dataset.get("SeriesInstanceUID", "unknown"))
        except Exception:  # undecodable dataset: tell the sender, keep listening
            return CANNOT_UNDERSTAND
        with self._lock:
            pending = self._series.get(series_uid)
            if pending is None:
                folder = self.root / uuid.uuid4().hex
                folder.mkdir()
                header = pydicom.Dataset()
                keep = {"Modality", "BodyPartExamined", "SeriesDescription", "SOPClassUID"}
                for keyword in keep | rule_keywords(self.settings.routing_rules):
                    if keyword in dataset:
                        setattr(header, keyword, dataset.get(keyword))
                pending = self._series[series_uid] = PendingSeries(folder, header, event.assoc.requestor.ae_title)
            pending.last_received = time.monotonic()
            target = pending.folder / f"{uuid.uuid4().hex}.dcm"
        try:
            dataset.save_as(target, enforce_file_format=True)
        except Exception:
            return OUT_OF_RESOURCES
        return SUCCESS

    def flush_quiet(self, now: float | None = None) -> None:
        now = now or time.monotonic()
        with self._lock:
            ready = [uid for uid, p in self._series.items() if now - p.last_received >= self.settings.dimse_quiet_seconds]
            batches = [self._series.pop(uid) for uid in ready]
        for pending in batches:
            self._submit(pending)

    def _submit(self, pending: PendingSeries) -> None:
        try:
            routing = route(pending.header, self.settings.routing_rules, pending.calling_ae)
            task = self.task or routing.task
            export_to = list(routing.export_to) if routing.task == task else []  # the routing rule's destinations
            if task is None:
                log.warning("a received series matched no routing rule (MEDIMG_ROUTING_RULES); it was discarded")
                return
            files = sorted(pending.folder.iterdir())
            streams = [path.open("rb") for path in files]
            try:
                job, _ = self.intake.accept(task, streams, None, caller=f"dimse-{pending.calling_ae.strip()}",
                                            priority=routing.priority or JobPriority.ROUTINE,
                                            export_to=export_to)
            finally:
                for stream in streams:
                    stream.close()
            self.job_ids.append(job.id)
            log.info("job %s queued from a DIMSE series of %d instance(s), task %s", job.id, len(files), task.value)
        except MedimgError as exc:
            log.warning("a received series was refused at intake: %s", exc.code)
        finally:
            shutil.rmtree(pending.folder, ignore_errors=True)

    def run_timer(self, stop: threading.Event) -> None:
        while not stop.wait(0.5):
            self.flush_quiet()


def make_listener_ae(collector: SeriesCollector, ae_title: str) -> tuple[AE, list]:
    _config.LOG_REQUEST_IDENTIFIERS = False  # pynetdicom would otherwise log query identifiers
    _config.LOG_RESPONSE_IDENTIFIERS = False
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    ae = AE(ae_title=ae_title)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    handlers = [(evt.EVT_C_STORE, collector.handle_store)]
    return ae, handlers
