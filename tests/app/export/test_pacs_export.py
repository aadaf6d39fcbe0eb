"""Results go back to the PACS: a real Orthanc over DICOMweb (STOW-RS) and over its own DICOM port (C-STORE),
and dcmtk's storescp; a peer that is down gets retries, then the dead-letter list, then an admin's resend.

One embedded service and one Orthanc for the module; each test runs its own thyroid job (an ultrasound DICOM
gives both a SEG and an SR), so the SOP Instance UIDs of its results are its own.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pydicom
import pytest

from tests.utils.exports import (
    assert_study_viewable,
    result_uids,
    sent,
    us_instance,
    wait_export,
    wait_job_as,
)
from tests.utils.keys import auth, keys_env
from tests.utils.pacs import STORESCP, Orthanc, Storescp, orthanc_available
from devkit.services import Service, service_env

pytestmark = pytest.mark.skipif(not orthanc_available() or STORESCP is None,
                                reason="Debian packages orthanc, orthanc-dicomweb and dcmtk are needed")

TASK = "thyroid-malignancy"
MAX_ATTEMPTS = 6  # with retries after 1, 2, 3, 3, 3 s: a peer restarted within 12 s gets its export


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path_factory.mktemp("orthanc"), dicom=True).start()
    yield server
    server.stop()


# Orthanc that dies as the second instance of an association arrives, after storing and acknowledging the first.
DIES_ON_SECOND = """
received = 0
function ReceivedInstanceFilter(dicom, origin, info)
  if origin.RequestOrigin ~= 'DicomProtocol' then return true end
  print('medimg-test received ' .. dicom.SOPInstanceUID)
  received = received + 1
  if received == 2 then os.exit(1) end
  return true
end
"""
LOGS_ONLY = """
function ReceivedInstanceFilter(dicom, origin, info)
  if origin.RequestOrigin == 'DicomProtocol' then print('medimg-test received ' .. dicom.SOPInstanceUID) end
  return true
end
"""


@pytest.fixture(scope="module")
def dying_orthanc(tmp_path_factory) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path_factory.mktemp("dying-orthanc"), dicom=True, ae_title="DYING")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def peers(tmp_path_factory) -> dict:
    """Ports of the storescp destinations, started and stopped by the tests themselves."""
    root = tmp_path_factory.mktemp("storescp")
    return {name: Storescp(root / name) for name in ("storescp", "flaky", "nowhere")}


@pytest.fixture(scope="module")
def service(tmp_path_factory, orthanc: Orthanc, dying_orthanc: Orthanc, peers: dict) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("export-service")
    secret = data_dir / "orthanc-auth"
    secret.write_text("Authorization: Bearer not-needed-by-this-orthanc\n")  # read per send, never logged
    destinations = [
        {"name": "orthanc-web", "kind": "dicomweb", "url": orthanc.dicomweb, "auth_header_file": str(secret),
         "include_sources": True},
        {"name": "orthanc-dimse", "kind": "dimse", "ae_title": orthanc.ae_title, "host": "127.0.0.1",
         "port": orthanc.dicom_port},
        {"name": "dying", "kind": "dimse", "ae_title": dying_orthanc.ae_title, "host": "127.0.0.1",
         "port": dying_orthanc.dicom_port},
        *({"name": name, "kind": "dimse", "ae_title": peer.ae_title, "host": "127.0.0.1", "port": peer.port,
           "include_sources": name == "storescp"} for name, peer in peers.items()),
    ]
    keys = json.loads(keys_env())
    for key in keys:
        if key["name"] == "clinic-a":
            key["may_export_to"] = [d["name"] for d in destinations if d["name"] != "orthanc-web"]
        if key["name"] == "clinic-b":
            key["export_to"] = ["storescp"]
    env = service_env(
        data_dir, MEDIMG_API_KEYS=json.dumps(keys), MEDIMG_EXPORT_DESTINATIONS=json.dumps(destinations),
        MEDIMG_ROUTING_RULES=json.dumps([{"task": TASK, "modality": "US", "export_to": ["orthanc-web"]}]),
        MEDIMG_EXPORT_MAX_ATTEMPTS=str(MAX_ATTEMPTS), MEDIMG_EXPORT_RETRY_FIRST_SECONDS="1",
        MEDIMG_EXPORT_RETRY_MAX_SECONDS="3", MEDIMG_EXPORT_POLL_SECONDS="0.2", MEDIMG_EXPORT_PROBE_SECONDS="1",
        MEDIMG_EXPORT_TIMEOUT_SECONDS="10",
    )
    running = Service(data_dir, env)
    running.start_gateway()
    yield running
    running.stop()


def submit(service: Service, data: bytes, caller: str = "clinic-a",
           export_to: list[str] | None = None) -> httpx.Response:
    form = {"task": TASK} | ({"export_to": json.dumps(export_to)} if export_to is not None else {})
    return httpx.post(f"{service.url}/v1/jobs", data=form, files=[("files", ("us.dcm", data, "application/dicom"))],
                      headers=auth(caller), timeout=60)


def run_exported(service: Service, data: bytes, export_to: list[str], caller: str = "clinic-a") -> dict:
    response = submit(service, data, caller, export_to)
    assert response.status_code == 202, response.text
    job = wait_job_as(service, response.json()["id"], caller)
    assert job["status"] == "succeeded", job
    return job


def test_stow_routed_series_is_exported_to_orthanc_over_dicomweb(service: Service, orthanc: Orthanc) -> None:
    # A PACS pushes a series by STOW-RS; the routing rule picks the task and names the destination, which
    # holds no copy of the study yet (include_sources): it receives the source with the SEG and SR.
    data = us_instance(1)
    source = pydicom.dcmread(io.BytesIO(data))
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
            + f"\r\n--{boundary}--\r\n".encode())
    stored = httpx.post(f"{service.url}/dicomweb/studies", content=body, headers=auth("clinic-a") | {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}, timeout=60)
    assert stored.status_code == 200, stored.text
    [job_id] = stored.headers["X-Medimg-Job-Ids"].split(",")
    job = wait_job_as(service, job_id, "clinic-a")
    assert job["status"] == "succeeded", job

    export = wait_export(service, job_id, "orthanc-web", sent)
    assert export["attempts"] == 1 and export["last_error"] is None and export["sent_at"]
    assert_study_viewable(orthanc, source.StudyInstanceUID, source.SOPInstanceUID, result_uids(service, job))


def test_job_is_exported_to_orthanc_over_its_dicom_port(service: Service, orthanc: Orthanc) -> None:
    # The usual case: the PACS already holds the study and receives only our SEG and SR, by C-STORE.
    data = us_instance(2)
    source = pydicom.dcmread(io.BytesIO(data))
    assert httpx.post(f"{orthanc.url}/instances", content=data, timeout=30).status_code == 200

    job = run_exported(service, data, ["orthanc-dimse"])
    assert wait_export(service, job["id"], "orthanc-dimse", sent)["attempts"] == 1
    assert_study_viewable(orthanc, source.StudyInstanceUID, source.SOPInstanceUID, result_uids(service, job))


def test_api_key_default_exports_to_storescp_negotiating_an_uncompressed_syntax(service: Service, peers) -> None:
    storescp = peers["storescp"].start()
    try:
        data = us_instance(3, compressed=True)
        job = run_exported(service, data, [], caller="clinic-b")  # the key's export_to names storescp
        wait_export(service, job["id"], "storescp", sent, caller="clinic-b")
        received = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, storescp.received())}
        source_uid = pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
        assert set(received) == {source_uid, *result_uids(service, job, "clinic-b").values()}
        # The RLE source went over as the uncompressed syntax storescp accepts, pixels intact.
        assert not received[source_uid].file_meta.TransferSyntaxUID.is_compressed
        assert received[source_uid].pixel_array.tobytes() == pydicom.dcmread(io.BytesIO(data)).pixel_array.tobytes()
    finally:
        storescp.stop()


def test_destination_down_during_export_is_retried_and_delivered_once(service: Service, peers) -> None:
    flaky = peers["flaky"].start()
    flaky.stop()  # the PACS goes down before the job's results are ready
    job = run_exported(service, us_instance(4), ["flaky"])
    failing = wait_export(service, job["id"], "flaky", lambda e: e["attempts"] >= 1 and e["last_error"])
    assert failing["status"] in ("pending", "sending") and "cannot reach" in failing["last_error"], failing

    flaky.start()  # back
    try:
        export = wait_export(service, job["id"], "flaky", sent)
        assert 2 <= export["attempts"] <= MAX_ATTEMPTS
        stored = {str(pydicom.dcmread(p).SOPInstanceUID) for p in flaky.received()}
        assert stored == set(result_uids(service, job).values())
        assert flaky.receptions() == 2  # SEG and SR, each received once
        assert "already exists" not in flaky.log_path.read_text(errors="replace")
    finally:
        flaky.stop()


def test_peer_stopping_mid_association_gets_only_the_rest_once_back(service: Service,
                                                                   dying_orthanc: Orthanc) -> None:
    dying_orthanc.lua = DIES_ON_SECOND
    dying_orthanc.start()
    data = us_instance(7)
    source = pydicom.dcmread(io.BytesIO(data))
    assert httpx.post(f"{dying_orthanc.url}/instances", content=data, timeout=30).status_code == 200
    job = run_exported(service, data, ["dying"])
    failing = wait_export(service, job["id"], "dying", lambda e: e["attempts"] >= 1 and e["last_error"])
    assert failing["status"] != "sent", failing
    dying_orthanc.process.wait(30)  # it stopped itself on the second instance (SEG stored, SR not)
    first_run = dying_orthanc.log_path.read_text(errors="replace")
    results = result_uids(service, job)
    assert first_run.count("medimg-test received") == 2 and results["seg.dcm"] in first_run

    dying_orthanc.lua = LOGS_ONLY
    dying_orthanc.start()
    export = wait_export(service, job["id"], "dying", sent)
    assert export["attempts"] >= 2
    second_run = dying_orthanc.log_path.read_text(errors="replace")[len(first_run):]
    # Only the instance the peer had not confirmed went again; the archive holds each instance once.
    assert second_run.count("medimg-test received") == 1 and results["sr.dcm"] in second_run, second_run[-2000:]
    assert_study_viewable(dying_orthanc, source.StudyInstanceUID, source.SOPInstanceUID, results)


def test_destination_that_stays_down_is_dead_lettered_then_resent_by_an_admin(service: Service, peers) -> None:
    job = run_exported(service, us_instance(5), ["nowhere"])
    dead = wait_export(service, job["id"], "nowhere", lambda e: e["status"] == "dead")
    assert dead["attempts"] == MAX_ATTEMPTS
    assert "cannot reach STORESCP@127.0.0.1" in dead["last_error"] and "gave up after" in dead["last_error"]

    listed = httpx.get(f"{service.url}/v1/exports/dead", headers=auth("ops"), timeout=30).json()
    assert {"job_id": job["id"], "destination": "nowhere"}.items() <= next(
        d for d in listed["data"] if d["job_id"] == job["id"]).items()
    resend = f"{service.url}/v1/jobs/{job['id']}/exports/nowhere/resend"
    refused = httpx.post(resend, headers=auth("clinic-a"), timeout=30)
    assert refused.status_code == 403 and refused.headers["content-type"] == "application/problem+json"

    nowhere = peers["nowhere"].start()
    try:
        reopened = httpx.post(resend, headers=auth("ops"), timeout=30)
        assert reopened.status_code == 202, reopened.text
        assert reopened.json()["attempts"] == 0
        assert wait_export(service, job["id"], "nowhere", sent)["attempts"] == 1
        assert len(nowhere.received()) == 2
        again = httpx.post(f"{service.url}/v1/jobs/{job['id']}/exports/orthanc-web/resend", headers=auth("ops"))
        assert again.status_code == 404 and again.json()["code"] == "export-not-found"
    finally:
        nowhere.stop()


def test_export_to_outside_the_keys_allowance_is_refused(service: Service) -> None:
    forbidden = submit(service, us_instance(6), export_to=["orthanc-web"])  # not in clinic-a's may_export_to
    assert forbidden.status_code == 403, forbidden.text
    assert "orthanc-web" in forbidden.json()["detail"]
    unknown = submit(service, us_instance(6), export_to=["no-such-pacs"])
    assert unknown.status_code == 422 and "no-such-pacs" in unknown.json()["detail"]
    assert forbidden.headers["content-type"] == unknown.headers["content-type"] == "application/problem+json"


def test_readyz_reports_destination_reachability_and_metrics_count_outcomes(service: Service, peers) -> None:
    deadline = time.monotonic() + 30
    while True:
        ready = httpx.get(f"{service.url}/readyz", timeout=30)
        assert ready.status_code == 200, ready.text  # a PACS being down never makes the service unready
        reach = ready.json()["export_destinations"]
        # Probed every second; `nowhere` answered until the previous test stopped it.
        if all(r["reachable"] is not None for r in reach.values()) and reach["nowhere"]["reachable"] is False:
            break
        assert time.monotonic() < deadline, reach
        time.sleep(0.5)
    assert reach["orthanc-web"]["reachable"] and reach["orthanc-dimse"]["reachable"], reach
    assert reach["nowhere"]["reachable"] is False and "cannot reach the peer" in reach["nowhere"]["detail"]
    assert str(peers["nowhere"].port) not in json.dumps(reach)  # /readyz is open: no addresses in it

    metrics = httpx.get(f"{service.url}/metrics", timeout=30).text
    assert 'medimg_exports_total{destination="orthanc-web",outcome="sent"}' in metrics
    assert 'medimg_exports_total{destination="nowhere",outcome="dead"} 1.0' in metrics
    assert 'medimg_exports_total{destination="flaky",outcome="retry"}' in metrics
    assert "not-needed-by-this-orthanc" not in "".join(p.read_text() for p in service.log_paths)
