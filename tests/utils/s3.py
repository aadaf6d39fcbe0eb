"""A local S3 API for tests: moto's server mode as a real process on a free port, and helpers around it."""

from __future__ import annotations

import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from devkit.services import _wait_until, free_port

ACCESS_KEY = "medimg-test"
SECRET_KEY = "medimg-test-secret"
REGION = "us-east-1"


@dataclass
class MotoServer:
    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "moto.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()

        def answers() -> bool:
            try:
                return httpx.get(f"{self.endpoint_url}/moto-api/", timeout=2).status_code < 500
            except httpx.HTTPError:
                return False

        _wait_until(answers, 30, "moto_server", self.workdir / "moto.log")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def client(self):
        import boto3

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        )

    def new_bucket(self) -> str:
        name = f"medimg-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def settings_env(self, bucket: str, prefix: str = "blobs") -> dict[str, str]:
        """The MEDIMG_* variables that point a gateway or worker at this server."""
        return {
            "MEDIMG_BLOB_URL": f"s3://{bucket}/{prefix}",
            "MEDIMG_S3_ENDPOINT_URL": self.endpoint_url,
            "MEDIMG_S3_REGION": REGION,
            "MEDIMG_S3_ACCESS_KEY_ID": ACCESS_KEY,
            "MEDIMG_S3_SECRET_ACCESS_KEY": SECRET_KEY,
        }
