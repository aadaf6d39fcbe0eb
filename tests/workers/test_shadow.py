"""Shadow runs: a candidate model version runs on the served jobs; only admin keys see what it said."""

from __future__ import annotations

import json
import time

import httpx

from devkit.api import TIMEOUT
from tests.utils.evaluation import medimg_eval
from devkit.fundus import dicom_fundus_bytes, make_fundus, png_bytes
from tests.utils.keys import auth, keys_env
from devkit.reference_models import REPO_ROOT
from devkit.services import Service, service_env

MODEL = "dr-grading-reference"


def repository_with_candidate(root):
    """Version 1 served (pinned), version 2 the candidate: the same weights under a new version number."""
    source = REPO_ROOT / "models" / MODEL / "1"
    (root / MODEL / "2").mkdir(parents=True)
    (root / MODEL / "1").symlink_to(source, target_is_directory=True)
    manifest = json.loads((source / "manifest.json").read_text())
    (root / MODEL / "2" / "manifest.json").write_text(json.dumps({**manifest, "version": 2}))
    for name in ("model.onnx", "CARD.md"):
        (root / MODEL / "2" / name).symlink_to(source / name)
    return root


def admin_job_with_shadow(service: Service, job_id: str, timeout: float = 60) -> dict:
    """The shadow run follows the served result, so an admin may have to look again for it."""
    deadline = time.monotonic() + timeout
    while True:
        job = httpx.get(f"{service.url}/v1/jobs/{job_id}", headers=auth("ops"), timeout=TIMEOUT).json()
        if job["shadow"] is not None or time.monotonic() > deadline:
            return job
        time.sleep(0.5)


def test_shadow_run_stored_with_the_job_and_hidden_from_the_caller(tmp_path) -> None:
    data_dir = tmp_path / "var"
    env = service_env(
        data_dir, MEDIMG_MODEL_REPOSITORY=str(repository_with_candidate(tmp_path / "models")),
        MEDIMG_MODEL_VERSIONS=json.dumps({MODEL: 1}), MEDIMG_API_KEYS=keys_env(),
        MEDIMG_SHADOW_MODELS=json.dumps({"dr-grading": {"model_id": MODEL, "version": 2, "sample_rate": 1.0}}),
    )
    service = Service(data_dir, env)
    service.start_gateway()
    jobs = []
    try:
        for seed, data in ((1, dicom_fundus_bytes(make_fundus(seed=901, grade=3).rgb)),
                           (2, png_bytes(make_fundus(seed=902, grade=0).rgb))):
            response = httpx.post(f"{service.url}/v1/jobs", data={"task": "dr-grading"},
                                  files=[("files", (f"eye{seed}", data))],
                                  headers={**auth("clinic-a"), "Prefer": "wait=60"}, timeout=TIMEOUT)
            assert response.status_code == 200, response.text
            submitted = response.json()
            assert submitted["status"] == "succeeded" and submitted["model"]["version"] == 1
            assert submitted["shadow"] is None
            jobs.append(submitted)

        served = jobs[0]
        admin = admin_job_with_shadow(service, served["id"])
        shadow = admin["shadow"]
        assert shadow is not None, admin
        assert shadow["model"] == {**served["model"], "version": 2}
        assert shadow["result"]["grade"] == served["result"]["grade"]
        assert shadow["error"] is None and shadow["artifact_keys"] == {}  # no DICOM, no image for DR
        # The caller's own view, read after the shadow result is stored, still has none of it.
        own = httpx.get(f"{service.url}/v1/jobs/{served['id']}", headers=auth("clinic-a"), timeout=TIMEOUT).json()
        assert own["shadow"] is None
        assert own["result"] == served["result"] and own["artifacts"] == admin["artifacts"]
        assert [a["name"] for a in own["artifacts"] if a["name"].endswith(".dcm")] == ["sr.dcm"]  # served one only
        assert admin_job_with_shadow(service, jobs[1]["id"])["shadow"] is not None
    finally:
        service.stop()

    out = tmp_path / "shadow-report"
    medimg_eval({k: v for k, v in env.items() if k != "MEDIMG_SHADOW_MODELS"}, "--shadow", "--task", "dr-grading",
                "--out", str(out))
    report = json.loads((out / "shadow.json").read_text())
    assert report["jobs"] == 2
    assert report["served_models"] == [f"{MODEL}@1"] and report["shadow_models"] == [f"{MODEL}@2"]
    agreement = report["agreement"]
    assert agreement["referable_flips"] == 0 and agreement["qwk"]["value"] == 1.0
    assert agreement["grade_agreement"] == {"value": 1.0, "ci95": [1.0, 1.0], "n": 2}
