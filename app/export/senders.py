"""Sending DICOM instances to a destination, and asking whether it answers.

DIMSE: a pynetdicom C-STORE SCU. For each SOP class it proposes the instance's own transfer syntax and, for
uncompressed data, both little-endian syntaxes; pynetdicom converts between uncompressed syntaxes, and a
compressed instance whose syntax the peer refused is decompressed and sent uncompressed. DICOMweb: STOW-RS
with httpx, one multipart/related request. Each sender reports which SOP Instance UIDs the peer confirmed,
so a retry sends only the rest, and raises `SendFailed` saying whether trying again can help.

Errors carry status codes and exception types, never dataset values: they go into the job document and logs.
"""

from __future__ import annotations

import logging
import ssl
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO

import httpx
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from app.config import DicomwebDestination, DimseDestination

log = logging.getLogger(__name__)

UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
MAX_CONTEXTS = 128  # PS3.8: presentation context ids are odd numbers 1-255


class SendFailed(Exception):
    def __init__(self, reason: str, transient: bool, stored: list[str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.stored = stored or []


@dataclass(frozen=True)
class Instance:
    sop_instance_uid: str
    data: bytes  # Part 10 file


@dataclass
class Reachability:
    reachable: bool
    detail: str


def sender_for(destination: DimseDestination | DicomwebDestination, timeout: float) -> DimseSender | DicomwebSender:
    if isinstance(destination, DimseDestination):
        return DimseSender(destination, timeout)
    return DicomwebSender(destination, timeout)


# --- DIMSE ---------------------------------------------------------------------------------------------

def c_store_failure_transient(status: int) -> bool:
    """PS3.4 B.2.3: out of resources (A7xx) may pass; a data set the peer does not accept will not."""
    return 0xA700 <= status <= 0xA7FF or status in (0x0210, 0x0213)  # duplicate invocation, resource limitation


class DimseSender:
    def __init__(self, destination: DimseDestination, timeout: float) -> None:
        self.destination = destination
        self.timeout = timeout

    def _ae(self):
        from pynetdicom import AE, _config

        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        ae = AE(ae_title=self.destination.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        ae.connection_timeout = min(self.timeout, 10)
        return ae

    def _associate(self, ae):
        tls_args = None
        if self.destination.tls is not None:
            tls = self.destination.tls
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file))
            context.check_hostname = tls.check_hostname
            if tls.cert_file is not None:
                context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
            tls_args = (context, self.destination.host)
        from pynetdicom import evt

        connected = []  # pynetdicom reports a refused connection as an aborted association; this tells them apart
        answers = []  # the peer's A-ASSOCIATE answer: a rejection says whether trying again can help
        handlers = [(evt.EVT_CONN_OPEN, lambda _: connected.append(1)),
                    (evt.EVT_ACSE_RECV, lambda event: answers.append(event.primitive))]
        try:
            assoc = ae.associate(self.destination.host, self.destination.port, ae_title=self.destination.ae_title,
                                 tls_args=tls_args, evt_handlers=handlers)
        except (OSError, ssl.SSLError) as exc:
            raise SendFailed(f"cannot reach {self._peer()} ({type(exc).__name__})", transient=True) from exc
        if not assoc.is_established:
            if not connected:
                raise SendFailed(f"cannot reach {self._peer()} (no TCP connection: refused, unreachable or timed out)",
                                 transient=True)
            rejection = next((answer for answer in answers if getattr(answer, "result", None) in (0x01, 0x02)), None)
            if assoc.is_rejected and rejection is not None:
                # PS3.8 9.3.4: "rejected-permanent" (a called AE title the peer does not know, say) will not
                # change by waiting; dead-letter it with the peer's reason, for a person to fix and resend.
                permanent = rejection.result == 0x01
                raise SendFailed(f"association with {self._peer()} rejected {'permanently' if permanent else 'for now'}"
                                 f" ({rejection.source_str}: {rejection.reason_str})", transient=not permanent)
            what = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
            raise SendFailed(f"association with {self._peer()} {what}", transient=True)
        return assoc

    def _peer(self) -> str:
        return f"{self.destination.ae_title}@{self.destination.host}:{self.destination.port}"

    def send(self, instances: list[Instance]) -> list[str]:
        datasets = [pydicom.dcmread(BytesIO(i.data)) for i in instances]
        ae = self._ae()
        contexts: list[tuple[str, tuple[str, ...]]] = []
        for dataset in datasets:
            syntax = dataset.file_meta.TransferSyntaxUID
            for offered in ([[syntax]] if syntax.is_compressed else []) + [UNCOMPRESSED]:
                if (dataset.SOPClassUID, tuple(offered)) not in contexts:
                    contexts.append((dataset.SOPClassUID, tuple(offered)))
        if len(contexts) > MAX_CONTEXTS:
            raise SendFailed(f"{len(contexts)} presentation contexts needed, more than one association holds",
                             transient=False)
        for abstract, syntaxes in contexts:
            ae.add_requested_context(abstract, list(syntaxes))
        assoc = self._associate(ae)
        stored: list[str] = []
        try:
            accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
            for dataset in datasets:
                sop_class, syntax = dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID
                if syntax.is_compressed and (sop_class, syntax) not in accepted:
                    # The peer takes this SOP class uncompressed only. Same instance, same UID: references to it
                    # must still resolve (PS3.5 8.2: decompressing does not make a new instance).
                    dataset.decompress(generate_instance_uid=False)
                try:
                    status = assoc.send_c_store(dataset)
                except ValueError as exc:  # no accepted presentation context for it, or not encodable so
                    raise SendFailed(f"{self._peer()} accepts no presentation context for SOP class {sop_class}",
                                     transient=False, stored=stored) from exc
                except RuntimeError as exc:  # the peer ended the association under us
                    raise SendFailed(f"association with {self._peer()} lost", transient=True, stored=stored) from exc
                code = status.get("Status") if status else None
                if code is None:
                    raise SendFailed(f"no C-STORE response from {self._peer()} (connection lost or timed out)",
                                     transient=True, stored=stored)
                if code == 0x0000 or 0xB000 <= code <= 0xBFFF:  # success, or stored with a warning
                    stored.append(str(dataset.SOPInstanceUID))
                    continue
                raise SendFailed(f"{self._peer()} refused an instance with C-STORE status 0x{code:04X}",
                                 transient=c_store_failure_transient(code), stored=stored)
        finally:
            if assoc.is_established:
                assoc.release()
        return stored

    def probe(self) -> Reachability:
        from pynetdicom.sop_class import Verification

        ae = self._ae()
        ae.add_requested_context(Verification)
        try:
            assoc = self._associate(ae)
        except SendFailed as exc:
            # /readyz answers anyone who can reach it: the detail leaves out the peer's address.
            return Reachability(False, exc.reason.replace(self._peer(), "the peer"))
        try:
            status = assoc.send_c_echo()
        finally:
            if assoc.is_established:
                assoc.release()
        code = status.get("Status") if status else None
        if code == 0x0000:
            return Reachability(True, "C-ECHO succeeded")
        return Reachability(False, "no C-ECHO response" if code is None else f"C-ECHO status 0x{code:04X}")


# --- DICOMweb ------------------------------------------------------------------------------------------

def read_auth_header(destination: DicomwebDestination) -> dict[str, str]:
    """The header from `auth_header_file`: `Name: value`, or a bare value meaning `Authorization`."""
    if destination.auth_header_file is None:
        return {}
    line = destination.auth_header_file.read_text(encoding="utf-8").strip()
    name, separator, value = line.partition(":")
    if not separator or " " in name.strip():
        return {"Authorization": line}
    return {name.strip(): value.strip()}


class DicomwebSender:
    def __init__(self, destination: DicomwebDestination, timeout: float,
                 client_factory: Callable[..., httpx.Client] = httpx.Client) -> None:
        self.destination = destination
        self.timeout = timeout
        self._client_factory = client_factory

    @property
    def root(self) -> str:
        return self.destination.url.rstrip("/")

    def _client(self) -> httpx.Client:
        try:
            headers = read_auth_header(self.destination)
        except OSError as exc:
            raise SendFailed(f"auth_header_file of {self.destination.name!r} unreadable ({type(exc).__name__})",
                             transient=True) from exc
        return self._client_factory(headers=headers, timeout=self.timeout, follow_redirects=False)

    def send(self, instances: list[Instance]) -> list[str]:
        boundary = f"medimg-{uuid.uuid4().hex}"
        body = BytesIO()
        for instance in instances:
            body.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            body.write(instance.data)
            body.write(b"\r\n")
        body.write(f"--{boundary}--\r\n".encode())
        content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
        try:
            with self._client() as client:
                response = client.post(f"{self.root}/studies", content=body.getvalue(),
                                       headers={"Content-Type": content_type, "Accept": "application/dicom+json"})
        except httpx.HTTPError as exc:
            raise SendFailed(f"STOW-RS to {self._where()} failed ({type(exc).__name__})", transient=True) from exc
        stored, failed = _stow_outcome(response, instances)
        if response.status_code in (200, 202) and not failed:
            return stored
        transient = response.status_code >= 500 or response.status_code in (408, 429)
        detail = f"STOW-RS to {self._where()} answered {response.status_code}"
        if failed:
            detail += f"; {len(failed)} instance(s) refused (Failure Reason {', '.join(sorted(set(failed)))})"
            transient = transient or all(reason.upper().startswith("0XA7") for reason in failed)
        raise SendFailed(detail, transient=transient, stored=stored)

    def _where(self) -> str:
        parts = httpx.URL(self.root)
        return f"{parts.scheme}://{parts.host}:{parts.port or ''}{parts.path}"  # no credentials, no query

    def probe(self) -> Reachability:
        """A QIDO-RS search for nothing in particular: answers if the service and our credentials work."""
        try:
            with self._client() as client:
                response = client.get(f"{self.root}/studies", params={"limit": "1"},
                                      headers={"Accept": "application/dicom+json"})
        except (httpx.HTTPError, SendFailed) as exc:
            return Reachability(False, f"QIDO-RS probe failed ({type(exc).__name__})")
        if response.status_code in (200, 204):
            return Reachability(True, f"QIDO-RS answered {response.status_code}")
        return Reachability(False, f"QIDO-RS answered {response.status_code}")


def _stow_outcome(response: httpx.Response, instances: list[Instance]) -> tuple[list[str], list[str]]:
    """Stored SOP Instance UIDs and failure reasons from a STOW-RS response (PS3.18 Table 10.5.3-1)."""
    try:
        document = response.json()
    except ValueError:
        document = None
    if not isinstance(document, dict):
        stored = [i.sop_instance_uid for i in instances] if response.status_code == 200 else []
        return stored, []

    def values(tag: str) -> list:
        return (document.get(tag) or {}).get("Value") or []

    stored = [item.get("00081155", {}).get("Value", [None])[0] for item in values("00081199")]
    failed = [f"0x{int(item.get('00081197', {}).get('Value', [0])[0]):04X}" for item in values("00081198")]
    return [uid for uid in stored if uid], failed
