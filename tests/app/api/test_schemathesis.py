"""schemathesis against the service's own OpenAPI schema, with a valid key: no 5xx, no schema violation.

The key is the admin one and the rate limit is raised for the run, so no operation is left untested behind
401s or 429s; STOW-RS bodies go out as multipart/related through tests/app/api/schemathesis_hooks.py. Every
check runs, schema-valid requests must be accepted (but where tests/app/api/schemathesis.toml says why not).

Run through its CLI on a live gateway (its pytest plugin does not support pytest 9 yet).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.utils.keys import KEYS, keys_env
from devkit.reference_models import REPO_ROOT
from devkit.services import Service, service_env

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.fixture(scope="module")
def fuzzed_service(tmp_path_factory) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("schemathesis")
    service = Service(data_dir, service_env(data_dir, MEDIMG_API_KEYS=keys_env(),
                                            MEDIMG_RATE_LIMIT_PER_MINUTE="100000", MEDIMG_MAX_WAIT_SECONDS="1",
                                            MEDIMG_UNAUTHENTICATED_RATE_LIMIT_PER_MINUTE="100000"))
    service.start_gateway()
    yield service
    service.stop()


def test_api_conforms_to_its_schema(fuzzed_service: Service, tmp_path: Path) -> None:
    completed = subprocess.run(
        # Every check runs, positive_data_acceptance included; schemathesis.toml turns it off for the two
        # uploads only (why: there) and gives the job listing a well-formed cursor.
        [str(SCHEMATHESIS), "--config-file", str(CONFIG), "run", f"{fuzzed_service.url}/openapi.json",
         "--header", f"Authorization: Bearer {KEYS['ops'][0]}", "--max-examples", "30", "--request-timeout", "30",
         "--generation-deterministic", "--report-dir", str(tmp_path), "--no-color"],
        capture_output=True, text=True, timeout=900, cwd=REPO_ROOT,
        env=os.environ | {"SCHEMATHESIS_HOOKS": "tests.app.api.schemathesis_hooks"},
    )
    assert completed.returncode == 0, completed.stdout[-6000:] + completed.stderr[-2000:]
    assert fuzzed_service.gateway.process.poll() is None
    # The STOW bodies were parsed: before the hook gave the Content-Type, every one was a 415 (form-encoded).
    log_lines = fuzzed_service.gateway.log_path.read_text().splitlines()
    stow_statuses = [json.loads(line)["audit"]["status"] for line in log_lines
                     if '"action": "POST /dicomweb/studies"' in line]
    assert stow_statuses and sum(status != 415 for status in stow_statuses) > len(stow_statuses) / 2, stow_statuses
