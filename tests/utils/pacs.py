"""Real DICOM peers for tests: Orthanc (DICOMweb and its own DICOM port) and dcmtk's storescp."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from devkit.services import free_port

ORTHANC = shutil.which("Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
STORESCP = shutil.which("storescp")


def orthanc_available() -> bool:
    return ORTHANC is not None and DICOMWEB_PLUGIN.exists()


@dataclass
class Orthanc:
    """An Orthanc of its own: storage in `workdir`, DICOMweb at /dicom-web/, optionally its DICOM port."""

    workdir: Path
    dicom: bool = False
    ae_title: str = "ORTHANC"
    dicomweb_servers: dict[str, dict] = field(default_factory=dict)
    lua: str | None = None  # a Lua script, e.g. a ReceivedInstanceFilter (read at each start)
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self) -> Orthanc:
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "medimg-test", "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "DicomServerEnabled": self.dicom, "DicomAet": self.ae_title, "DicomCheckCalledAet": False,
            "StorageDirectory": str(storage), "IndexDirectory": str(storage), "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": self.dicomweb_servers},
        }
        if self.lua is not None:
            script = self.workdir / "script.lua"
            script.write_text(self.lua)
            config["LuaScripts"] = [str(script)]
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(config))
        log = self.log_path.open("ab")
        self.process = subprocess.Popen([ORTHANC, str(config_path)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/system", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, self.log_path.read_text(errors="replace")[-2000:]
            time.sleep(0.2)

    @property
    def log_path(self) -> Path:
        return self.workdir / "orthanc.log"

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(20)
            self.process = None


@dataclass
class Storescp:
    """dcmtk's storescp writing what it receives to `out_dir` (file names from the SOP Instance UIDs)."""

    workdir: Path
    ae_title: str = "STORESCP"
    port: int = field(default_factory=free_port)
    tls_args: list[str] = field(default_factory=list)  # e.g. ["+tls", key, cert, "+cf", trusted client cert]
    process: subprocess.Popen | None = None

    @property
    def out_dir(self) -> Path:
        return self.workdir / "received"

    @property
    def log_path(self) -> Path:
        return self.workdir / "storescp.log"

    def start(self) -> Storescp:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        # Default transfer syntaxes only (uncompressed): a sender must negotiate down to them.
        self.process = subprocess.Popen([STORESCP, "-v", "-aet", self.ae_title, *self.tls_args, "-od",
                                         str(self.out_dir), str(self.port)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 15
        while not self._answers():
            assert time.monotonic() < deadline, self.log_path.read_text(errors="replace")[-2000:]
            time.sleep(0.2)
        return self

    def _answers(self) -> bool:
        if self.tls_args:  # echoscu would need the same certificates: a TCP connection will do
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False
        return subprocess.run(["echoscu", "-aec", self.ae_title, "127.0.0.1", str(self.port)],
                              capture_output=True).returncode == 0

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def received(self) -> list[Path]:
        return sorted(p for p in self.out_dir.iterdir() if p.is_file())

    def receptions(self) -> int:
        """C-STORE requests it took in, over all its runs (its log accumulates)."""
        return self.log_path.read_text(errors="replace").count("Received Store Request")
