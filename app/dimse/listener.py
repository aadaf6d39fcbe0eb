"""`medimg dicom-listener`: a pynetdicom C-STORE SCP that turns received series into jobs.

Instances are written to a per-series folder as they arrive (any storage SOP class, compressed transfer
syntaxes included). A series that has been quiet for MEDIMG_DIMSE_QUIET_SECONDS is complete: it goes
through the same Intake as an HTTP upload, with the task from `--task` or the routing rules (which may also
match the calling AE title, and set the priority), and the folder is removed whether the series was accepted
or refused. Identifiers are never logged.

Who may send is configured, as PACS gateways do: MEDIMG_DIMSE_PEERS lists each known peer's calling AE
title and address (or network) with the caller its jobs belong to. Any other association is refused with
A-ASSOCIATE-RJ (calling AE title not recognised) before a byte of data is taken. Without the list, the
listener accepts anyone but binds to loopback only (`medimg dicom-listener` refuses other addresses), and
jobs belong to "dimse-<calling AE title>". With MEDIMG_DIMSE_TLS_CERT/KEY it speaks DICOM over TLS, and with
MEDIMG_DIMSE_TLS_CA it requires the peer's certificate too.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, _config, evt

from app.config import DimsePeer, Settings
from app.errors import MedimgError
from app.export.policy import ExportPolicy
from app.intake.routing import route, rule_keywords
from app.intake.service import Intake
from app.schemas.jobs import JobPriority
from app.schemas.tasks import TaskName
from app.security.keys import Principal, load_keys

log = logging.getLogger(__name__)

ACSE_TIMEOUT_SECONDS = 10
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000


# A-ASSOCIATE-RJ: rejected (permanent), by the service user, calling AE title not recognised (PS3.8 9.3.4)
REJECTED_PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNISED = 0x01, 0x01, 0x03
# pynetdicom inflates a deflated data set whole in memory before any handler sees it, with no bound: a few
# kilobytes on the wire could become gigabytes. Peers fall back to another syntax for that context.
ACCEPTED_TRANSFER_SYNTAXES = [uid for uid in ALL_TRANSFER_SYNTAXES if uid != DeflatedExplicitVRLittleEndian]


@dataclass(frozen=True)
class KnownPeers:
    peers: list[DimsePeer]

    def caller(self, ae_title: str, address: str) -> str | None:
        """The caller a peer's jobs belong to; None when this AE title may not send from this address."""
        if not self.peers:
            return f"dimse-{ae_title.strip()}"  # loopback-only development listener
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return None
        for peer in self.peers:
            if peer.ae_title == ae_title.strip() and ip in ipaddress.ip_network(peer.address, strict=False):
                return peer.caller
        return None

    def check_association(self, event) -> None:
        """EVT_REQUESTED: refuse an unknown peer before negotiation (pynetdicom's hook for A-ASSOCIATE-RJ)."""
        requestor = event.assoc.requestor
        if self.caller(requestor.primitive.calling_ae_title, requestor.address) is None:
            log.warning("association refused: calling AE title and address are not a configured peer "
                        "(MEDIMG_DIMSE_PEERS)")
            event.assoc.acse.send_reject(REJECTED_PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNISED)
            event.assoc.kill()  # as pynetdicom's own rejections do: waits until the A-ASSOCIATE-RJ has gone out


@dataclass
class PendingSeries:
    folder: Path
    header: pydicom.Dataset
    calling_ae: str
    caller: str
    last_received: float = field(default_factory=time.monotonic)


class SeriesCollector:
    def __init__(self, intake: Intake, settings: Settings, task: TaskName | None) -> None:
        self.intake = intake
        self.settings = settings
        self.task = task
        self.root = settings.data_dir / "dimse"
        self.root.mkdir(parents=True, exist_ok=True)
        self.peers = KnownPeers(settings.dimse_peers)
        # A peer's jobs belong to a caller named like an API key; that key's defaults apply as over HTTP.
        keys = load_keys(settings)
        self.key_priorities = {key.name: JobPriority(key.priority) for key in keys}
        self.export_policy = ExportPolicy(settings, keys)
        self._series: dict[tuple[str, str], PendingSeries] = {}
        self._lock = threading.Lock()

    def handle_store(self, event) -> int:
        try:
            dataset = event.dataset
            dataset.file_meta = event.file_meta
            series_uid = str(dataset.get("SeriesInstanceUID", "unknown"))
        except Exception:  # undecodable dataset: tell the sender, keep listening
            return CANNOT_UNDERSTAND
        requestor = event.assoc.requestor
        caller = self.peers.caller(requestor.ae_title, requestor.address)
        if caller is None:  # the association check already refused it; never reached in practice
            return OUT_OF_RESOURCES
        key = (caller, requestor.ae_title, series_uid)  # two peers sending one series UID stay two jobs
        with self._lock:
            pending = self._series.get(key)
            if pending is None:
                folder = self.root / uuid.uuid4().hex
                folder.mkdir()
                header = pydicom.Dataset()
                keep = {"Modality", "BodyPartExamined", "SeriesDescription", "SOPClassUID"}
                for keyword in keep | rule_keywords(self.settings.routing_rules):
                    if keyword in dataset:
                        setattr(header, keyword, dataset.get(keyword))
                pending = self._series[key] = PendingSeries(folder, header, requestor.ae_title, caller)
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
            routed = list(routing.export_to) if routing.task == task else []  # the routing rule's destinations
            owner = Principal(pending.caller, frozenset(), authenticated=True)
            export_to = self.export_policy.destinations(owner, [], routed)  # and the peer's key's export_to
            priority = routing.priority or self.key_priorities.get(pending.caller, JobPriority.ROUTINE)
            if task is None:
                log.warning("a received series matched no routing rule (MEDIMG_ROUTING_RULES); it was discarded")
                return
            files = sorted(pending.folder.iterdir())
            streams = [path.open("rb") for path in files]
            try:
                job, _ = self.intake.accept(task, streams, None, caller=pending.caller,
                                            priority=priority,
                                            export_to=export_to)
            finally:
                for stream in streams:
                    stream.close()
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
    # A peer that goes silent (no A-ASSOCIATE-RQ, no close after our A-ASSOCIATE-RJ) holds a thread this long.
    ae.acse_timeout = ACSE_TIMEOUT_SECONDS
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
    handlers = [(evt.EVT_REQUESTED, collector.peers.check_association), (evt.EVT_C_STORE, collector.handle_store)]
    return ae, handlers


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The listener's TLS context (DICOM over TLS, PS3.15 B.1), when a certificate is configured."""
    if settings.dimse_tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.dimse_tls_cert, settings.dimse_tls_key)
    if settings.dimse_tls_ca is not None:
        context.load_verify_locations(settings.dimse_tls_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
