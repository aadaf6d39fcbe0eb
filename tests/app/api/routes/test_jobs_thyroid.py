"""Thyroid malignancy jobs over HTTP: held-out synthetic frames in, Dice and AUC out; size; caller ROIs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from devkit.api import get_artifact, run_job, submit_job, wait_job
from devkit.services import Service
from devkit.ultrasound import (
    dice,
    dicom_us_bytes,
    held_out_item,
    make_frame,
    png_bytes,
    ultrasound_region,
)
from workers.imaging.ultrasound import to_grey

TASK = "thyroid-malignancy"
N_HELD_OUT = 300  # the model card's whole held-out set, through the API
RESULT_FIELDS = {"malignancy_probability", "risk_band", "recommendation", "nodule", "operating_point",
                 "pixel_spacing_mm", "spacing_source", "research_use_only"}


@pytest.fixture(params=["embedded", "celery"])
def service(request) -> Service:
    return request.getfixturevalue(f"{request.param}_service")


def _mask(service: Service, job: dict) -> np.ndarray:
    response = get_artifact(service, job, "nodule-mask.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content))) > 0


def test_held_out_frames_reach_dice_and_auc_targets(embedded_service: Service) -> None:
    items = [held_out_item(i) for i in range(N_HELD_OUT)]
    submitted = []
    for item in items:
        response = submit_job(embedded_service, TASK, [("frame.png", png_bytes(item.frame))])
        assert response.status_code == 202, response.text
        submitted.append(response.json()["id"])
    dices, probabilities = [], []
    for item, job_id in zip(items, submitted, strict=True):
        job = wait_job(embedded_service, job_id)
        assert job["status"] == "succeeded", job
        assert RESULT_FIELDS <= set(job["result"])
        assert job["model"]["id"] == "thyroid-malignancy-reference"
        mask = _mask(embedded_service, job)
        assert mask.shape == item.frame.shape[:2]
        dices.append(dice(mask, item.mask))
        probabilities.append(job["result"]["malignancy_probability"])
    labels = [item.malignant for item in items]
    assert 0 < sum(labels) < len(labels)
    assert np.mean(dices) >= 0.80, np.mean(dices)
    assert roc_auc_score(labels, probabilities) >= 0.90, roc_auc_score(labels, probabilities)


def test_dicom_us_regions_give_max_diameter_within_ten_percent(service: Service) -> None:
    # A smooth-margined nodule: the test is about the spacing path (regions in cm → mm). Spiculated margins
    # are measured short by the segmentation (their tips are smoothed away); the card reports how often
    # the diameter is off by more than 10 % over the held-out split.
    item = make_frame(101, ui=True, margin="smooth")
    data = dicom_us_bytes(to_grey(item.frame), regions=[ultrasound_region(item.region, item.pixel_spacing_mm)])
    job = run_job(service, TASK, [("us.dcm", data)])
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert result["spacing_source"] == "ultrasound-regions"
    assert result["pixel_spacing_mm"] == pytest.approx([item.pixel_spacing_mm] * 2)
    assert result["nodule"]["max_diameter_mm"] == pytest.approx(item.max_diameter_mm, rel=0.10)
    assert result["recommendation"]["action"] != "size-unknown"
    assert {"nodule-mask.png", "overlay.png"} <= {a["name"] for a in job["artifacts"]}


def test_png_without_spacing_gives_null_size_and_says_size_is_unknown(embedded_service: Service) -> None:
    # A highly suspicious nodule, so that the band has a size rule to apply.
    item = make_frame(102, ui=True, composition="solid", echogenicity="very-hypoechoic", margin="irregular",
                      foci="punctate")
    job = run_job(embedded_service, TASK, [("frame.png", png_bytes(item.frame))])
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert result["pixel_spacing_mm"] is None and result["spacing_source"] == "none"
    assert result["nodule"]["max_diameter_mm"] is None
    assert result["risk_band"] in ("TR4", "TR5")
    assert result["recommendation"]["action"] == "size-unknown"
    assert "size is unknown" in result["recommendation"]["text"]


def test_roi_box_is_honoured_instead_of_segmentation(embedded_service: Service) -> None:
    item = make_frame(103, ui=True)
    # A box away from the real nodule: segmentation would have found the nodule, the caller's box wins.
    ys, xs = np.nonzero(item.mask)
    x0, y0, x1, y1 = item.region
    box = [x0 + 5, y0 + 5, x0 + 45, y0 + 35] if xs.min() > x0 + 60 or ys.min() > y0 + 50 else [x1 - 45, y1 - 35,
                                                                                                 x1 - 5, y1 - 5]
    job = run_job(embedded_service, TASK, [("frame.png", png_bytes(item.frame))], {"roi": {"box": box}})
    assert job["status"] == "succeeded", job
    nodule = job["result"]["nodule"]
    assert nodule["bbox_px"] == box and nodule["source"] == "roi-box"
    assert dice(_mask(embedded_service, job), item.mask) < 0.2


def test_roi_mask_artifact_from_an_earlier_job_is_honoured(service: Service) -> None:
    item = make_frame(104, ui=False)
    first = run_job(service, TASK, [("frame.png", png_bytes(item.frame))])
    assert first["status"] == "succeeded", first
    roi = {"roi": {"mask_artifact": {"job_id": first["id"], "name": "nodule-mask.png"}}}
    second = run_job(service, TASK, [("frame.png", png_bytes(item.frame))], {"roi": roi["roi"],
                                                                             "pixel_spacing_mm": 0.1})
    assert second["status"] == "succeeded", second
    assert second["result"]["nodule"]["source"] == "roi-mask"
    assert second["result"]["nodule"]["bbox_px"] == first["result"]["nodule"]["bbox_px"]
    assert np.array_equal(_mask(service, second), _mask(service, first))


def test_roi_mask_artifact_of_an_unknown_job_fails_as_bad_input(embedded_service: Service) -> None:
    item = make_frame(105)
    roi = {"roi": {"mask_artifact": {"job_id": "00000000-0000-0000-0000-000000000000", "name": "nodule-mask.png"}}}
    job = run_job(embedded_service, TASK, [("frame.png", png_bytes(item.frame))], roi)
    assert job["status"] == "failed" and job["error"]["kind"] == "bad-input"
    assert "mask_artifact" in job["error"]["detail"]


def test_invalid_roi_is_refused_at_the_door(embedded_service: Service) -> None:
    item = make_frame(106)
    response = submit_job(embedded_service, TASK, [("frame.png", png_bytes(item.frame))],
                          {"roi": {"box": [50, 50, 10, 60]}})
    assert response.status_code == 422
    assert response.json()["code"] == "invalid-options"


def test_multiframe_dicom_uses_options_frame(embedded_service: Service) -> None:
    first, second = make_frame(107, ui=False), make_frame(108, ui=False)
    height = min(first.frame.shape[0], second.frame.shape[0])
    width = min(first.frame.shape[1], second.frame.shape[1])
    data = dicom_us_bytes([first.frame[:height, :width], second.frame[:height, :width]])
    job = run_job(embedded_service, TASK, [("cine.dcm", data)], {"frame": 1})
    assert job["status"] == "succeeded", job
    assert dice(_mask(embedded_service, job), second.mask[:height, :width]) > 0.7
