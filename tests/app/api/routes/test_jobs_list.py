"""GET /v1/jobs over real HTTP, in both job stores: a caller sees only its own jobs, filtered and paged."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from devkit.api import submit_job, wait_job
from devkit.fundus import make_fundus
from devkit.fundus import png_bytes as fundus_png
from tests.utils.keys import auth, keys_env
from devkit.services import Service, service_env
from devkit.ultrasound import make_frame
from devkit.ultrasound import png_bytes as ultrasound_png


@dataclass
class Listed:
    service: Service
    jobs: dict[str, list[dict]]  # caller -> its finished jobs, oldest first


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def listed(request, tmp_path_factory, redis_server) -> Iterator[Listed]:
    """A keyed gateway (embedded, or Celery on a Redis database of its own with one worker) and finished jobs."""
    data_dir = tmp_path_factory.mktemp(f"list-{request.param}")
    redis_url = None
    if request.param == "redis":
        redis_url = redis_server.url.rsplit("/", 1)[0] + "/4"
    service = Service(data_dir, service_env(data_dir, redis_url, MEDIMG_API_KEYS=keys_env()))
    if redis_url:
        service.start_worker(queues="dr-grading,thyroid-malignancy", pool="threads")
    service.start_gateway()
    fundus = fundus_png(make_fundus(seed=5, size=256).rgb)
    plan = [("clinic-a", "dr-grading"), ("clinic-b", "dr-grading"), ("clinic-a", "thyroid-malignancy"),
            ("clinic-a", "dr-grading"), ("clinic-b", "dr-grading"), ("clinic-a", "dr-grading")]
    jobs: dict[str, list[dict]] = {"clinic-a": [], "clinic-b": []}
    for caller, task in plan:
        files = [("a.png", fundus)] if task == "dr-grading" else [("f.png", ultrasound_png(make_frame(3).frame))]
        response = submit_job(service, task, files, headers=auth(caller))
        assert response.status_code == 202, response.text
        jobs[caller].append(response.json())
    for caller, submitted in jobs.items():
        jobs[caller] = [wait_job_as(service, caller, job["id"]) for job in submitted]
    yield Listed(service, jobs)
    service.stop()


def wait_job_as(service: Service, caller: str, job_id: str) -> dict:
    response = httpx.get(f"{service.url}/v1/jobs/{job_id}", params={"wait": 60}, headers=auth(caller), timeout=90)
    assert response.status_code == 200 and response.json()["status"] == "succeeded", response.text
    return response.json()


def list_jobs(service: Service, caller: str, **params) -> httpx.Response:
    return httpx.get(f"{service.url}/v1/jobs", params=params, headers=auth(caller), timeout=30)


def ids(jobs: list[dict]) -> list[str]:
    return [j["id"] for j in jobs]


def test_list_jobs_own_jobs_newest_first(listed: Listed) -> None:
    for caller, jobs in listed.jobs.items():
        response = list_jobs(listed.service, caller)
        assert response.status_code == 200, response.text
        page = response.json()
        assert ids(page["data"]) == ids(jobs)[::-1]
        assert page["count"] == len(jobs) and page["next"] is None
        assert page["data"][0] == jobs[-1]  # the same documents GET /v1/jobs/{id} returns


def test_list_jobs_admin_sees_all_and_reader_only_own(listed: Listed) -> None:
    everything = sorted(listed.jobs["clinic-a"] + listed.jobs["clinic-b"], key=lambda j: (j["created_at"], j["id"]))
    assert ids(list_jobs(listed.service, "ops").json()["data"]) == ids(everything)[::-1]
    assert list_jobs(listed.service, "viewer").json() == {"data": [], "count": 0, "next": None}


def test_list_jobs_without_key_unauthorized(listed: Listed) -> None:
    response = httpx.get(f"{listed.service.url}/v1/jobs")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"


def test_list_jobs_filters(listed: Listed) -> None:
    mine = listed.jobs["clinic-a"]
    service = listed.service
    thyroid = [j for j in mine if j["task"] == "thyroid-malignancy"]
    assert ids(list_jobs(service, "clinic-a", task="thyroid-malignancy").json()["data"]) == ids(thyroid)
    assert ids(list_jobs(service, "clinic-a", status="succeeded").json()["data"]) == ids(mine)[::-1]
    assert list_jobs(service, "clinic-a", status="failed").json()["data"] == []
    # Exclusive bounds: after the first job's creation and before the last one's leaves the two in between.
    window = list_jobs(service, "clinic-a", created_after=mine[0]["created_at"], created_before=mine[-1]["created_at"])
    assert ids(window.json()["data"]) == ids(mine[1:-1])[::-1]
    assert list_jobs(service, "clinic-a", status="done").status_code == 422
    # A time is written out with its offset: not seconds since the epoch, not a wall-clock time of no zone.
    for vague in ("1764633600", "2026-12-01T08:00:00", "2026-12-01"):
        response = list_jobs(service, "clinic-a", created_after=vague)
        assert response.status_code == 422 and "created_after" in response.json()["detail"], response.text


def test_list_jobs_pages_follow_next_links(listed: Listed) -> None:
    seen, url, pages = [], f"{listed.service.url}/v1/jobs?limit=3&task=dr-grading", 0
    while url:
        response = httpx.get(url, headers=auth("ops"), timeout=30)
        assert response.status_code == 200, response.text
        page = response.json()
        assert page["count"] == len(page["data"]) <= 3
        seen += ids(page["data"])
        url = listed.service.url + page["next"] if page["next"] else None
        pages += 1
    dr = sorted([j for jobs in listed.jobs.values() for j in jobs if j["task"] == "dr-grading"],
                key=lambda j: (j["created_at"], j["id"]), reverse=True)
    assert seen == ids(dr) and pages == 2


def test_list_jobs_foreign_cursor_is_a_problem(listed: Listed) -> None:
    response = list_jobs(listed.service, "clinic-a", cursor="not-ours")
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert "cursor" in response.json()["detail"]
