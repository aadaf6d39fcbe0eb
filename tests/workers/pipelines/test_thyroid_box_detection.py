"""thyroid-malignancy with a 2-D box-detection model as the nodule localiser: boxes in the detector's input pixels
(after the imaging-region crop and a letterbox or stretch resize) land on the frame's pixels and, through the
frame's own pixel spacing, in millimetres; overlapping boxes are merged by NMS in mm; the best box is the nodule
the classifier scores.

The detector is an ONNX graph built here that answers fixed boxes; the classifier is the reference one, whose
manifest a site re-issues to require its own detector instead of the reference segmenter. Pixels are not square
(the US region's PhysicalDeltaX and PhysicalDeltaY differ, or PixelSpacing's two values), and the resize scales
the two axes by different amounts or offsets one by the letterbox padding, so a swapped axis or a missed scale
moves a finding.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.config import Settings
from app.schemas.tasks import TaskName
from devkit.api import get_artifact, run_job
from devkit.services import Service, service_env
from devkit.ultrasound import dicom_us_bytes, make_frame, ultrasound_region
from tests.utils.onnx_models import fixed_box_detector
from tests.utils.thyroid_detector import (
    CASCADE,
    DETECTOR,
    THRESHOLD,
    cascade_repository,
    detector_manifest,
    letterboxed,
    stretched,
)
from workers.imaging.ultrasound import find_imaging_region, to_grey
from workers.local import predict_files

SPACING = (0.12, 0.08)  # (row, column) mm: PhysicalDeltaY, PhysicalDeltaX
SEED = 101  # a smooth-margined nodule at frame pixels (304, 170)-(454, 360), inside the region (87, 59)-(601, 464)
LETTERBOX = (192, 320)  # (H, W): the 514 x 405 region is scaled by 192/405 and padded 38 px on the left and right


def nodule_frame():
    return make_frame(SEED, ui=True, margin="smooth")


# Frame-pixel boxes of the letterbox job and what becomes of each (the nodule's own box is A).
BOX_A = (300.0, 165.0, 458.0, 364.0)  # the nodule: kept, id 1
BOX_A_SHIFTED = (310.0, 175.0, 462.0, 370.0)  # IoU 0.82 with A: suppressed
BOX_NEAR_CENTRE = (389.0, 255.0, 409.0, 274.0)  # centre 20 px right of A's: 1.6 mm (< 2), 2.4 mm if x were rows
BOX_B = (150.0, 100.0, 230.0, 160.0)  # elsewhere: kept, id 2, label cyst
BOX_LOW = (400.0, 380.0, 450.0, 420.0)  # below the operating point: dropped


def test_letterboxed_detector_job_over_http_reports_boxes_in_frame_pixels_and_mm(tmp_path) -> None:
    item = nodule_frame()
    region = item.region
    padded = letterboxed((0.0, 200.0, 120.0, 260.0), region, LETTERBOX)
    padded[0] = 20.0  # inside the left padding (38 px wide): clipped to the region's left edge
    model_boxes = [letterboxed(box, region, LETTERBOX) for box in (BOX_A, BOX_A_SHIFTED, BOX_NEAR_CENTRE, BOX_B,
                                                                    BOX_LOW)] + [padded]
    onnx_bytes = fixed_box_detector(model_boxes, [0.9, 0.8, 0.7, 0.6, 0.2, 0.5], [0, 0, 0, 1, 0, 0],
                                    [1, 3, *LETTERBOX])
    repository = cascade_repository(tmp_path / "models", onnx_bytes, detector_manifest(
        onnx_bytes, LETTERBOX, resize="letterbox", letterbox_fill=114))
    frame = dicom_us_bytes(to_grey(item.frame), regions=[ultrasound_region(region, SPACING)])

    service = Service(tmp_path / "var", service_env(tmp_path / "var", MEDIMG_MODEL_REPOSITORY=str(repository)))
    service.start_gateway()
    try:
        job = run_job(service, "thyroid-malignancy", [("us.dcm", frame)])
        overlay = get_artifact(service, job, "overlay.png")
    finally:
        service.stop()

    assert job["status"] == "succeeded", job
    assert job["model"]["id"] == CASCADE
    result = job["result"]
    assert result["spacing_source"] == "ultrasound-regions" and result["pixel_spacing_mm"] == pytest.approx(SPACING)
    detections = result["detections"]
    assert [(d["id"], d["label"], d["score"]) for d in detections] == [
        (1, "nodule", 0.9), (2, "cyst", 0.6), (3, "nodule", 0.5)]
    expected_px = [BOX_A, BOX_B, (float(region[0]), 200.0, 120.0, 260.0)]
    row_mm, column_mm = SPACING
    for detection, (x0, y0, x1, y1) in zip(detections, expected_px, strict=True):
        np.testing.assert_allclose(detection["bbox_px"], (x0, y0, x1, y1), atol=0.011)
        np.testing.assert_allclose(detection["center_px"], ((x0 + x1) / 2, (y0 + y1) / 2), atol=0.011)
        np.testing.assert_allclose(detection["bbox_mm"], (x0 * column_mm, y0 * row_mm, x1 * column_mm, y1 * row_mm),
                                   atol=0.011)
        np.testing.assert_allclose(detection["center_mm"], ((x0 + x1) / 2 * column_mm, (y0 + y1) / 2 * row_mm),
                                   atol=0.011)
        assert detection["width_mm"] == pytest.approx((x1 - x0) * column_mm, abs=0.011)
        assert detection["height_mm"] == pytest.approx((y1 - y0) * row_mm, abs=0.011)
    # The nodule scored is the ellipse in box A: 158 px wide at 0.08 mm, 199 px tall at 0.12 mm.
    nodule = result["nodule"]
    assert nodule["source"] == "detection" and nodule["bbox_px"] == [300, 165, 458, 364]
    assert nodule["max_diameter_mm"] == pytest.approx(199 * 0.12, rel=0.02)
    assert nodule["taller_than_wide"] is True  # 23.9 mm tall, 12.6 mm wide (in pixels it is nearly square)
    assert 0.0 <= result["malignancy_probability"] <= 1.0
    assert {"nodule-mask.png", "overlay.png", "seg.dcm", "sr.dcm"} <= {a["name"] for a in job["artifacts"]}
    drawn = np.asarray(Image.open(io.BytesIO(overlay.content)).convert("RGB"))
    assert tuple(drawn[130, 150]) == (0, 200, 255)  # box B's left edge (x 150, y 100-160), in the boxes' colour


def _predict(tmp_path: Path, detector_bytes: bytes, detector: dict, frame: bytes):
    repository = cascade_repository(tmp_path / "models", detector_bytes, detector)
    (tmp_path / "us.dcm").write_bytes(frame)
    settings = Settings(data_dir=tmp_path / "data", model_repository=repository)
    job, _ = predict_files(settings, TaskName.THYROID_MALIGNANCY, [tmp_path / "us.dcm"], None, show_progress=False)
    return job


STRETCH = (128, 256)  # (H, W): the region's columns scaled by about 0.5, its rows by about 0.3


def _pixel_spacing_frame() -> tuple[bytes, tuple[int, int, int, int]]:
    """The frame with PixelSpacing (row, column) = SPACING and no US region: the pipeline finds the region."""
    grey = to_grey(nodule_frame().frame)
    return dicom_us_bytes(grey, pixel_spacing_mm=SPACING), find_imaging_region(grey)


def test_stretched_grey_detector_maps_each_axis_by_its_own_scale(tmp_path) -> None:
    frame, region = _pixel_spacing_frame()
    column_scale, row_scale = STRETCH[1] / (region[2] - region[0]), STRETCH[0] / (region[3] - region[1])
    assert column_scale - row_scale > 0.1  # the axes are scaled apart: a swapped scale moves the box
    onnx_bytes = fixed_box_detector([stretched(BOX_A, region, STRETCH)], [0.9], [0], [1, 1, *STRETCH])
    job = _predict(tmp_path, onnx_bytes, detector_manifest(onnx_bytes, STRETCH, channels=1), frame)

    assert job.status == "succeeded", job.error
    assert job.result["spacing_source"] == "pixel-spacing"
    [detection] = job.result["detections"]
    np.testing.assert_allclose(detection["bbox_px"], BOX_A, atol=0.011)
    np.testing.assert_allclose(detection["bbox_mm"], (24.0, 19.8, 36.64, 43.68), atol=0.011)
    assert (detection["width_mm"], detection["height_mm"]) == pytest.approx((12.64, 23.88), abs=0.011)


def test_boxes_with_six_numbers_under_xyxy_fail_the_job_with_a_model_error(tmp_path) -> None:
    frame, region = _pixel_spacing_frame()
    onnx_bytes = fixed_box_detector([stretched(BOX_A, region, STRETCH) + [0.0, 1.0]], [0.9], [0], [1, 1, *STRETCH])
    # The manifest leaves the boxes' last axis dynamic, so only the run shows 6 numbers per box.
    manifest = detector_manifest(onnx_bytes, STRETCH, channels=1, boxes_shape=("n", "coordinates"))
    job = _predict(tmp_path, onnx_bytes, manifest, frame)

    assert job.status == "failed"
    assert job.error.kind == "model-error"
    assert "boxes are (1, 6); box_format xyxy has 4 numbers per box" in job.error.detail


def test_a_label_outside_class_names_fails_the_job_with_a_model_error(tmp_path) -> None:
    frame, region = _pixel_spacing_frame()
    onnx_bytes = fixed_box_detector([stretched(BOX_A, region, STRETCH)], [0.9], [2], [1, 1, *STRETCH])
    job = _predict(tmp_path, onnx_bytes, detector_manifest(onnx_bytes, STRETCH, channels=1), frame)

    assert job.status == "failed" and job.error.kind == "model-error"
    assert f"{DETECTOR}: a box has label 2; class_names has 2" in job.error.detail


def test_no_box_at_the_operating_point_asks_for_an_roi(tmp_path) -> None:
    frame, region = _pixel_spacing_frame()
    onnx_bytes = fixed_box_detector([stretched(BOX_A, region, STRETCH)], [THRESHOLD - 0.01], [0], [1, 1, *STRETCH])
    job = _predict(tmp_path, onnx_bytes, detector_manifest(onnx_bytes, STRETCH, channels=1), frame)

    assert job.status == "failed" and job.error.kind == "bad-input"
    assert f"no box of {DETECTOR} scored at or above {THRESHOLD:g}" in job.error.detail
    assert "options.roi" in job.error.detail
