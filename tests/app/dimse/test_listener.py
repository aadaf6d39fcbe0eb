"""`medimg dicom-listener`: dcmtk's storescu sends a series (RLE-compressed) and the job runs; only configured
peers (calling AE title and address) may associate, each mapped to a caller whose API key's defaults (priority,
export_to) the job gets; the Deflated syntax is not accepted; DICOM over TLS when configured."""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, RLELossless
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from app.schemas.jobs import JobPriority, JobStatus
from app.storage.jobs import SqliteJobStore
from devkit.ct import nodule_scan, synthetic_ct
from tests.utils.keys import keys_env
from tests.utils.pacs import STORESCP, Storescp
from devkit.services import Process, free_port, service_env

PATIENT = "Listener^Marked"
PEERS = [{"ae_title": "PACS1", "address": "127.0.0.1", "caller": "clinic-a"},
         {"ae_title": "PACS2", "address": "10.9.9.0/24", "caller": "clinic-b"},
         {"ae_title": "PACS3", "address": "127.0.0.1", "caller": "clinic-b"}]
ARCHIVE_PORT = free_port()  # the clinics' keys export every job there


def _keys_with_defaults() -> str:
    keys = json.loads(keys_env())
    for key in keys:
        if key["name"] == "clinic-a":  # its routine priority loses to PACS1's routing rule
            key |= {"export_to": ["archive"], "priority": "routine"}
        if key["name"] == "clinic-b":  # no rule names PACS3: the key's stat priority holds
            key |= {"export_to": ["archive"], "priority": "stat"}
    return json.dumps(keys)


def _start_listener(data_dir: Path, port: int, **env: str) -> Process:
    destinations = [{"name": "archive", "kind": "dimse", "ae_title": "STORESCP", "host": "127.0.0.1",
                     "port": ARCHIVE_PORT}]
    listener = Process(
        [sys.executable, "-m", "app.cli", "dicom-listener", "--port", str(port), "--task", "lung-nodule-detection"],
        service_env(data_dir, MEDIMG_DIMSE_QUIET_SECONDS="1", MEDIMG_DIMSE_PEERS=json.dumps(PEERS),
                    MEDIMG_ROUTING_RULES='[{"calling_ae_title": "PACS1", "priority": "stat"}]',
                    MEDIMG_API_KEYS=_keys_with_defaults(), MEDIMG_EXPORT_DESTINATIONS=json.dumps(destinations),
                    MEDIMG_EXPORT_RETRY_FIRST_SECONDS="1", MEDIMG_EXPORT_POLL_SECONDS="0.2", **env),
        data_dir / "logs" / "listener.log",
    ).start()
    deadline = time.monotonic() + 60
    while "listening" not in _read(listener.log_path):
        assert time.monotonic() < deadline and listener.process.poll() is None, _read(listener.log_path)
        time.sleep(0.2)
    return listener


@pytest.fixture(scope="module")
def listener(tmp_path_factory) -> Iterator[tuple[Process, int, Path]]:
    data_dir, port = tmp_path_factory.mktemp("dimse"), free_port()
    process = _start_listener(data_dir, port)
    yield process, port, data_dir
    process.stop()


def _associate(port: int, calling: str, tls: tuple | None = None):
    """The association's outcome; the client side is closed afterwards, as a real peer would."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDIMG", tls_args=tls)
    outcome = SimpleNamespace(is_established=assoc.is_established, is_rejected=assoc.is_rejected)
    if assoc.is_established:
        assoc.release()
    ae.shutdown()
    if assoc.dul.socket is not None:
        assoc.dul.socket.close()
    return outcome


def _series(folder: Path, seed: int) -> list[Path]:
    scan = nodule_scan(seed=seed)
    folder.mkdir()
    paths = synthetic_ct().write_ct_series(scan.hu, scan.grid, folder, instance_order="descending",
                                           shuffle_names=True, rng=np.random.default_rng(3))
    for path in paths:  # a compressed transfer syntax on the wire, as many PACS send
        dataset = pydicom.dcmread(path)
        dataset.PatientName = PATIENT
        dataset.compress(RLELossless)
        dataset.save_as(path)
    return paths


def _storescu(port: int, calling: str, folder: Path) -> None:
    sent = subprocess.run(["storescu", "-xr", "-aec", "MEDIMG", "-aet", calling, "+sd", "127.0.0.1", str(port),
                           str(folder)], capture_output=True, text=True, timeout=120)
    assert sent.returncode == 0, sent.stderr


def _queued_jobs(log_path: Path) -> list[tuple[str, int]]:
    return [(m.group(1), int(m.group(2)))
            for m in re.finditer(r"job ([0-9a-f-]{36}) queued from a DIMSE series of (\d+)", _read(log_path))]


@pytest.mark.skipif(shutil.which("storescu") is None or STORESCP is None, reason="dcmtk is not installed")
def test_storescu_series_becomes_a_job_of_the_peers_caller(listener, tmp_path: Path) -> None:
    process, port, data_dir = listener
    archive = Storescp(tmp_path / "archive", port=ARCHIVE_PORT).start()
    try:
        paths = _series(tmp_path / "series", seed=7)
        _storescu(port, "PACS1", tmp_path / "series")

        store = SqliteJobStore(data_dir / "jobs.sqlite3")
        job = None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            queued = _queued_jobs(process.log_path)
            if queued:
                assert queued[0][1] == len(paths)
                job = store.get(queued[0][0])
                if job.status.finished:
                    break
            time.sleep(0.5)
        assert job is not None and job.status is JobStatus.SUCCEEDED, _read(process.log_path)[-3000:]
        assert job.caller == "clinic-a"  # the configured peer's caller, not a name the sender chose
        assert job.priority is JobPriority.STAT  # the routing rule on its calling AE title wins over the key's
        assert len(job.result["nodules"]) >= 1
        assert job.export_to == ["archive"]  # the caller's API key default, as over HTTP
        while not archive.received():  # the results reach the key's destination
            assert time.monotonic() < deadline, _read(process.log_path)[-3000:]
            time.sleep(0.5)
        assert PATIENT not in _read(process.log_path)
    finally:
        archive.stop()


@pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk's storescu is not installed")
def test_peer_without_a_routing_rule_gets_its_keys_priority(listener, tmp_path: Path) -> None:
    process, port, data_dir = listener
    before = len(_queued_jobs(process.log_path))
    _series(tmp_path / "series", seed=8)
    _storescu(port, "PACS3", tmp_path / "series")
    deadline = time.monotonic() + 60
    while len(_queued_jobs(process.log_path)) == before:
        assert time.monotonic() < deadline, _read(process.log_path)[-3000:]
        time.sleep(0.5)
    job = SqliteJobStore(data_dir / "jobs.sqlite3").get(_queued_jobs(process.log_path)[before][0])
    assert job.caller == "clinic-b"
    assert job.priority is JobPriority.STAT  # clinic-b's key default; no rule names PACS3
    assert job.export_to == ["archive"]


def test_deflated_transfer_syntax_is_not_accepted(listener) -> None:
    # pynetdicom would inflate a deflated data set whole in memory: the listener does not negotiate it.
    _, port, _ = listener
    ae = AE(ae_title="PACS1")
    ae.add_requested_context(CTImageStorage, [DeflatedExplicitVRLittleEndian])
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDIMG")
    try:
        assert assoc.is_established
        assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [MRImageStorage]
        assert [cx.abstract_syntax for cx in assoc.rejected_contexts] == [CTImageStorage]
        dataset = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
        with pytest.raises(ValueError, match="presentation context"):
            assoc.send_c_store(dataset)
    finally:
        assoc.release()
        ae.shutdown()
    explicit = AE(ae_title="PACS1")  # the same SOP class with an uncompressed syntax is still taken
    explicit.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = explicit.associate("127.0.0.1", port, ae_title="MEDIMG")
    assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [CTImageStorage]
    assoc.release()
    explicit.shutdown()


@pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk's storescu is not installed")
def test_storescu_unknown_ae_title_rejected(listener, tmp_path: Path) -> None:
    _, port, _ = listener
    path = tmp_path / "one.dcm"
    pydicom.dcmwrite(path, pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm")))
    sent = subprocess.run(["storescu", "-aec", "MEDIMG", "-aet", "INTRUDER", "127.0.0.1", str(port), str(path)],
                          capture_output=True, text=True, timeout=60)
    assert sent.returncode != 0
    assert "Association Rejected" in sent.stderr + sent.stdout, sent.stderr


@pytest.mark.parametrize("calling", ["INTRUDER", "PACS2"])  # PACS2 is known, but only from 10.9.9.0/24
def test_association_from_unknown_peer_rejected(listener, calling: str) -> None:
    _, port, _ = listener
    assoc = _associate(port, calling)
    assert assoc.is_rejected and not assoc.is_established
    assert _associate(port, "PACS1").is_established  # the known peer from its address still gets in


def test_listener_refuses_public_bind_without_peers(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "app.cli", "dicom-listener", "--host", "0.0.0.0", "--port", str(free_port())],
        env=service_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert completed.returncode == 2
    assert "MEDIMG_DIMSE_PEERS" in completed.stderr


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_listener_over_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "listener.pem", tmp_path / "listener.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    port = free_port()
    process = _start_listener(tmp_path / "data", port, MEDIMG_DIMSE_TLS_CERT=str(cert), MEDIMG_DIMSE_TLS_KEY=str(key))
    try:
        client = ssl.create_default_context(cafile=str(cert))
        assert _associate(port, "PACS1", tls=(client, "localhost")).is_established
        assert _associate(port, "INTRUDER", tls=(client, "localhost")).is_rejected
        # Plain DICOM is not spoken: an A-ASSOCIATE-RQ in clear gets no A-ASSOCIATE-AC (PDU type 0x02).
        with socket.create_connection(("127.0.0.1", port), timeout=2) as plain:
            plain.sendall(b"\x01\x00" + bytes(200))
            try:
                answer = plain.recv(1)
            except (TimeoutError, ConnectionResetError):
                answer = b""
        assert answer != b"\x02"
    finally:
        process.stop()


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
