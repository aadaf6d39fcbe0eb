"""Quality refusals through the job path (#20): a 10 mm CT and an ultrasound frame with no B-mode image, sent
over HTTP to a real gateway and worker (embedded pool, and Celery on Redis), end "Not graded" with reasons and no
finding, volume or probability. The gate's own limits are tested in tests/workers/quality."""

from __future__ import annotations

import numpy as np
import pytest

from devkit.api import run_job
from devkit.covid import covid_case
from devkit.ct import write_series, zip_bytes
from devkit.services import Service
from devkit.ultrasound import png_bytes


@pytest.fixture(params=["embedded", "celery"])
def service(request) -> Service:
    return request.getfixturevalue(f"{request.param}_service")


@pytest.fixture(scope="module")
def ten_mm_series(tmp_path_factory) -> bytes:
    """A whole chest at 10 mm slices (spacing and thickness both over the CT models' limits), as a ZIP."""
    case = covid_case(5, matrix=96, slice_spacing=10.0)
    return zip_bytes(sorted(write_series(tmp_path_factory.mktemp("ten-mm"), case.hu, case.grid)))


def assert_not_graded(job: dict, task: str, reasons: list[str]) -> None:
    """Refused for at least `reasons` (a coarse test grid may add others, e.g. pixels too coarse for nodules)."""
    assert job["status"] == "succeeded", job
    assert set(job["result"]) == {"task", "quality", "research_use_only"}, job["result"]  # nothing judged
    assert job["result"]["task"] == task
    quality = job["result"]["quality"]
    assert quality["gradable"] is False
    assert set(reasons) <= {reason["code"] for reason in quality["reasons"]}, quality["reasons"]
    assert all(reason["detail"] for reason in quality["reasons"])  # each reason says what is wrong
    assert job["notes"][0].startswith("Not graded: the input failed the quality gate")
    assert job["artifacts"] == []


@pytest.mark.parametrize("task", ["covid-lesion-segmentation", "lung-nodule-detection"])
def test_ten_mm_ct_job_is_not_graded_with_the_spacing_reasons(service: Service, ten_mm_series: bytes,
                                                              task: str) -> None:
    job = run_job(service, task, [("series.zip", ten_mm_series)], timeout=180)

    assert_not_graded(job, task, ["slices-too-far-apart", "slices-too-thick"])
    assert job["result"]["quality"]["measures"]["slice_spacing_mm"] == pytest.approx(10.0)


def test_ultrasound_frame_without_an_image_is_not_graded(service: Service) -> None:
    black = np.zeros((480, 640), np.uint8)  # a frame grabbed before the probe touched the neck

    job = run_job(service, "thyroid-malignancy", [("frame.png", png_bytes(black))])

    assert_not_graded(job, "thyroid-malignancy", ["no-imaging-region"])
