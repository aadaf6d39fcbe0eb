"""The DIMSE sender over TLS (DICOM PS3.15 B.1), against dcmtk's storescp requiring our client certificate."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest

from app.config import DimseDestination
from app.export.senders import DimseSender, Instance, SendFailed
from tests.utils.exports import us_instance
from tests.utils.pacs import STORESCP, Storescp

pytestmark = pytest.mark.skipif(STORESCP is None or shutil.which("openssl") is None,
                                reason="dcmtk's storescp and openssl are needed")


def self_signed(folder: Path, name: str, subject_alt_name: str | None = None) -> tuple[Path, Path]:
    key, cert = folder / f"{name}-key.pem", folder / f"{name}.pem"
    args = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
            "-days", "1", "-subj", f"/CN={name}"]
    if subject_alt_name:
        args += ["-addext", f"subjectAltName={subject_alt_name}"]
    subprocess.run(args, check=True, capture_output=True, timeout=60)
    return key, cert


def test_dimse_over_tls_with_a_client_certificate(tmp_path: Path) -> None:
    server_key, server_cert = self_signed(tmp_path, "pacs", "IP:127.0.0.1")
    client_key, client_cert = self_signed(tmp_path, "medimg")
    peer = Storescp(tmp_path / "peer", tls_args=["+tls", str(server_key), str(server_cert), "+cf", str(client_cert)])
    peer.start()
    try:
        destination = {"name": "pacs", "kind": "dimse", "ae_title": peer.ae_title, "host": "127.0.0.1",
                       "port": peer.port}
        secured = DimseSender(DimseDestination.model_validate(destination | {"tls": {
            "ca_file": str(server_cert), "cert_file": str(client_cert), "key_file": str(client_key)}}), 10)
        data = us_instance(0)
        uid = str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)
        assert secured.probe().reachable
        assert secured.send([Instance(uid, data)]) == [uid]
        assert [pydicom.dcmread(p).SOPInstanceUID for p in peer.received()] == [uid]

        # Without our certificate the peer ends the association: a failure worth retrying, said plainly.
        anonymous = DimseSender(
            DimseDestination.model_validate(destination | {"tls": {"ca_file": str(server_cert)}}), 10)
        with pytest.raises(SendFailed) as failed:
            anonymous.send([Instance(uid, data)])
        assert failed.value.transient and "STORESCP@127.0.0.1" in failed.value.reason
    finally:
        peer.stop()
