"""A site chooses its operating point on its labelled data; the restarted service then decides with it."""

from __future__ import annotations

import json

import httpx
import numpy as np

from devkit.api import TIMEOUT
from tests.utils.evaluation import eyepacs_set, medimg_eval, read_cases, read_metrics
from devkit.reference_models import REPO_ROOT
from devkit.services import Service, service_env

MODEL = "dr-grading-reference"


def one_model_repository(root, model_id: str = MODEL):
    """A model repository serving only this model (the service warms every model it serves at start)."""
    root.mkdir()
    (root / model_id).symlink_to(REPO_ROOT / "models" / model_id, target_is_directory=True)
    return root


def grade(service: Service, path, options: dict | None = None) -> dict:
    form = {"task": "dr-grading", **({"options": json.dumps(options)} if options else {})}
    response = httpx.post(f"{service.url}/v1/jobs", data=form, files=[("files", (path.name, path.read_bytes()))],
                          headers={"Prefer": "wait=60"}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()["result"]


def test_choose_operating_point_sensitivity_then_restarted_service_uses_it(tmp_path) -> None:
    labelled = eyepacs_set(tmp_path / "eyepacs")
    repository = one_model_repository(tmp_path / "models")
    site_file = tmp_path / "site" / "site-config.json"
    env = service_env(tmp_path / "var", MEDIMG_MODEL_REPOSITORY=str(repository))
    image = next(p for p in sorted(labelled.data.iterdir()) if p.suffix == ".jpeg")

    service = Service(tmp_path / "var", env)
    service.start_gateway()
    try:
        before = grade(service, image)
    finally:
        service.stop()
    assert before["operating_point"]["name"] == "referable"

    out = tmp_path / "out"
    medimg_eval(env, "--task", "dr-grading", "--data", str(labelled.data), "--labels", str(labelled.labels),
                "--out", str(out), "--jobs", "1", "--bootstrap", "300",
                "--choose-operating-point", "sensitivity>=0.975", "--site-name", "site-high-sensitivity",
                "--site-config", str(site_file))
    config = json.loads(site_file.read_text())
    (entry,) = config["models"]
    (point,) = entry["operating_points"]
    threshold = point["threshold"]
    rows = read_cases(out)
    probability = np.array([float(r["referable_probability"]) for r in rows])
    referable = np.array([int(r["referable_true"]) for r in rows]).astype(bool)
    assert (probability[referable] >= threshold).mean() >= 0.975
    assert not (probability[referable] >= threshold + 2e-6).all()  # the highest threshold that still reaches it
    metrics = read_metrics(out)["metrics"]
    assert metrics["sensitivity@site-high-sensitivity"]["value"] == point["sensitivity"]
    assert point["sensitivity_ci95"] == metrics["sensitivity@site-high-sensitivity"]["ci95"]
    manifest = json.loads((REPO_ROOT / "models" / MODEL / "1" / "manifest.json").read_text())
    assert entry["model_sha256"] == manifest["sha256"]
    assert all(p["name"] != "site-high-sensitivity" for p in manifest["operating_points"])  # manifest untouched

    service = Service(tmp_path / "var", {**env, "MEDIMG_SITE_CONFIG": str(site_file)})
    service.start_gateway()
    try:
        after = grade(service, image)
        named = grade(service, image, {"operating_point": "referable"})
        served = httpx.get(f"{service.url}/v1/models", timeout=TIMEOUT).json()
    finally:
        service.stop()
    used = after["operating_point"]
    assert used["name"] == "site-high-sensitivity" and used["threshold"] == threshold
    assert used["sensitivity"] == point["sensitivity"] and used["sensitivity_ci95"] == point["sensitivity_ci95"]
    assert used["specificity_ci95"] == point["specificity_ci95"] and "site's labelled data" in used["measured_on"]
    assert after["referable"] == (after["referable_probability"] >= threshold)
    assert named["operating_point"]["name"] == "referable"
    assert named["operating_point"]["threshold"] == before["operating_point"]["threshold"]
    model = next(m for m in served["data"] if m["id"] == MODEL)
    assert model["default_operating_point"] == "site-high-sensitivity"
