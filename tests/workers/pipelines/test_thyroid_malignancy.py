"""The thyroid cascade without Celery: real files in, the committed models, results and artifacts out."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.errors import BadInputError
from app.model_repository import load_model_version
from app.schemas.jobs import Artifact, InputFile, Job, ModelRef
from app.schemas.options import ThyroidMalignancyOptions
from app.storage.blobs import FilesystemBlobStore
from app.storage.jobs import SqliteJobStore
from devkit.reference_models import reference_model_dir
from devkit.ultrasound import (
    dice,
    dicom_us_bytes,
    jpeg_bytes,
    make_frame,
    png_bytes,
    ultrasound_region,
)
from workers.imaging.ultrasound import to_grey
from workers.onnx import load_model
from workers.pipelines.base import JobContext, JobInput, StageTimer
from workers.pipelines.thyroid_malignancy import MASK_ARTIFACT, OVERLAY_ARTIFACT, ThyroidMalignancyPipeline

CLASSIFIER = "thyroid-malignancy-reference"
SEGMENTER = "thyroid-nodule-segmentation-reference"


@pytest.fixture(scope="module")
def classifier():
    model = load_model(load_model_version(reference_model_dir(CLASSIFIER) / "1"), ["CPUExecutionProvider"])
    segmenter = load_model(load_model_version(reference_model_dir(SEGMENTER) / "1"), ["CPUExecutionProvider"])
    model.requirements = {SEGMENTER: segmenter}
    return model


class _SegmenterThatMustNotRun:
    """Stands in for the segmentation model when a caller's ROI must bypass it."""

    def __init__(self, manifest) -> None:
        self.manifest = manifest
        self.calls = 0

    def run(self, feeds):
        self.calls += 1
        raise AssertionError("the segmentation model ran although the caller gave an ROI")


@pytest.fixture
def no_segmentation(classifier):
    real = classifier.requirements[SEGMENTER]
    stub = _SegmenterThatMustNotRun(real.manifest)
    classifier.requirements = {SEGMENTER: stub}
    yield classifier, stub
    classifier.requirements = {SEGMENTER: real}


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _run(path: Path, fmt: str, model, options: dict | None = None, context: JobContext | None = None):
    pipeline = ThyroidMalignancyPipeline()
    return pipeline.run([JobInput(path=path, format=fmt)], ThyroidMalignancyOptions.model_validate(options or {}),
                        model, StageTimer(), context=context)


def _mask_of(output) -> np.ndarray:
    data = next(a.data for a in output.artifacts if a.name == MASK_ARTIFACT)
    return np.asarray(Image.open(io.BytesIO(data))) > 0


def test_png_screenshot_without_spacing_gives_null_size_and_says_so(tmp_path, classifier) -> None:
    item = make_frame(11, ui=True)
    output = _run(_write(tmp_path, "f.png", png_bytes(item.frame)), "png", classifier)
    result = output.result
    assert result.pixel_spacing_mm is None and result.spacing_source == "none"
    assert result.nodule.max_diameter_mm is None
    assert result.recommendation.action in ("size-unknown", "no-fna")
    if result.risk_band.level >= 3:
        assert "size is unknown" in result.recommendation.text
    assert result.research_use_only is True
    assert result.nodule.source == "segmentation"
    assert dice(_mask_of(output), item.mask) >= 0.8
    assert {a.name for a in output.artifacts} == {MASK_ARTIFACT, OVERLAY_ARTIFACT}
    overlay = Image.open(io.BytesIO(next(a.data for a in output.artifacts if a.name == OVERLAY_ARTIFACT)))
    assert overlay.size == (item.frame.shape[1], item.frame.shape[0]) and overlay.mode == "RGB"


def test_png_with_spacing_option_applies_the_size_rule(tmp_path, classifier) -> None:
    item = make_frame(12, ui=False)
    output = _run(_write(tmp_path, "f.png", png_bytes(item.frame)), "png", classifier,
                  {"pixel_spacing_mm": item.pixel_spacing_mm})
    result = output.result
    assert result.spacing_source == "options"
    assert result.nodule.max_diameter_mm == pytest.approx(item.max_diameter_mm, rel=0.10)
    assert result.recommendation.action != "size-unknown"


def test_dicom_us_with_regions_measures_max_diameter_within_ten_percent(tmp_path, classifier) -> None:
    for seed in (21, 22, 23):
        item = make_frame(seed, ui=True)
        data = dicom_us_bytes(to_grey(item.frame), regions=[ultrasound_region(item.region, item.pixel_spacing_mm)])
        result = _run(_write(tmp_path, f"{seed}.dcm", data), "dicom", classifier).result
        assert result.spacing_source == "ultrasound-regions"
        assert result.pixel_spacing_mm == pytest.approx((item.pixel_spacing_mm,) * 2)
        assert result.nodule.max_diameter_mm == pytest.approx(item.max_diameter_mm, rel=0.10)


def test_multiframe_ybr_dicom_scores_the_requested_frame(tmp_path, classifier) -> None:
    first, second = make_frame(31, ui=False), make_frame(32, ui=False)
    height = min(first.frame.shape[0], second.frame.shape[0])
    width = min(first.frame.shape[1], second.frame.shape[1])
    frames = [np.repeat(f.frame[:height, :width, None], 3, axis=-1) for f in (first, second)]
    path = _write(tmp_path, "multi.dcm", dicom_us_bytes(frames, photometric="YBR_FULL"))
    one = _run(path, "dicom", classifier, {"frame": 1})
    mask = _mask_of(one)
    assert mask.shape == (height, width)
    assert dice(mask, second.mask[:height, :width]) > 0.7
    with pytest.raises(BadInputError, match="frame 2"):
        _run(path, "dicom", classifier, {"frame": 2})


def test_frame_option_on_a_png_is_refused(tmp_path, classifier) -> None:
    item = make_frame(13)
    with pytest.raises(BadInputError, match="options.frame"):
        _run(_write(tmp_path, "f.png", png_bytes(item.frame)), "png", classifier, {"frame": 1})


def test_jpeg_rgb_screenshot_is_scored(tmp_path, classifier) -> None:
    item = make_frame(14, ui=True)
    rgb = item.frame if item.frame.ndim == 3 else np.repeat(item.frame[..., None], 3, axis=-1)
    output = _run(_write(tmp_path, "f.jpeg", jpeg_bytes(rgb)), "jpeg", classifier)
    assert dice(_mask_of(output), item.mask) >= 0.8


def test_roi_box_bypasses_segmentation_and_is_the_nodule(tmp_path, no_segmentation) -> None:
    model, stub = no_segmentation
    item = make_frame(15, ui=True)
    box = [item.region[0] + 20, item.region[1] + 30, item.region[0] + 90, item.region[1] + 80]
    output = _run(_write(tmp_path, "f.png", png_bytes(item.frame)), "png", model, {"roi": {"box": box}})
    assert stub.calls == 0
    assert list(output.result.nodule.bbox_px) == box
    assert output.result.nodule.source == "roi-box"
    assert _mask_of(output).shape == item.frame.shape[:2]


def test_roi_box_outside_the_frame_is_refused(tmp_path, no_segmentation) -> None:
    model, _ = no_segmentation
    item = make_frame(16)
    rows, cols = item.frame.shape[:2]
    with pytest.raises(BadInputError, match="outside"):
        _run(_write(tmp_path, "f.png", png_bytes(item.frame)), "png", model, {"roi": {"box": [0, 0, cols + 1, rows]}})


@pytest.fixture
def stores(tmp_path):
    return SqliteJobStore(tmp_path / "jobs.sqlite3"), FilesystemBlobStore(tmp_path / "blobs")


def _earlier_job(stores, caller: str, mask: np.ndarray) -> Job:
    jobs, blobs = stores
    key = "jobs/earlier/artifacts/nodule-mask.png"
    size = blobs.put_bytes(key, png_bytes(mask.astype(np.uint8) * 255))
    job = Job(id="earlier", task="thyroid-malignancy", caller=caller,
              model=ModelRef(id=CLASSIFIER, version=1, sha256="0" * 64, research_use_only=True),
              inputs=[InputFile(key="jobs/earlier/inputs/00000.png", format="png", size_bytes=1)],
              artifacts=[Artifact(name="nodule-mask.png", media_type="image/png", key=key, size_bytes=size)])
    jobs.create(job)
    return job


def test_roi_mask_artifact_of_an_earlier_job_bypasses_segmentation(tmp_path, stores, no_segmentation) -> None:
    model, stub = no_segmentation
    item = make_frame(17, ui=True)
    _earlier_job(stores, "alice", item.mask)
    context = JobContext(job_id="now", caller="alice", jobs=stores[0], blobs=stores[1])
    roi = {"roi": {"mask_artifact": {"job_id": "earlier", "name": "nodule-mask.png"}}}
    output = _run(_write(tmp_path, "f.png", png_bytes(item.frame)), "png", model, roi, context)
    assert stub.calls == 0
    assert output.result.nodule.source == "roi-mask"
    assert np.array_equal(_mask_of(output), item.mask)


def test_roi_mask_artifact_of_another_caller_is_not_found(tmp_path, stores, no_segmentation) -> None:
    model, _ = no_segmentation
    item = make_frame(18)
    _earlier_job(stores, "alice", item.mask)
    context = JobContext(job_id="now", caller="mallory", jobs=stores[0], blobs=stores[1])
    roi = {"roi": {"mask_artifact": {"job_id": "earlier", "name": "nodule-mask.png"}}}
    with pytest.raises(BadInputError, match="no job 'earlier' of yours"):
        _run(_write(tmp_path, "f.png", png_bytes(item.frame)), "png", model, roi, context)


def test_roi_mask_artifact_must_match_the_frame_size_and_exist(tmp_path, stores, no_segmentation) -> None:
    model, _ = no_segmentation
    item = make_frame(19)
    _earlier_job(stores, "alice", np.ones((10, 10), bool))
    context = JobContext(job_id="now", caller="alice", jobs=stores[0], blobs=stores[1])
    path = _write(tmp_path, "f.png", png_bytes(item.frame))
    with pytest.raises(BadInputError, match="10x10 pixels"):
        _run(path, "png", model, {"roi": {"mask_artifact": {"job_id": "earlier", "name": "nodule-mask.png"}}},
             context)
    with pytest.raises(BadInputError, match="no artifact 'overlay.png'"):
        _run(path, "png", model, {"roi": {"mask_artifact": {"job_id": "earlier", "name": "overlay.png"}}}, context)
    with pytest.raises(BadInputError, match="no job 'gone' of yours"):
        _run(path, "png", model, {"roi": {"mask_artifact": {"job_id": "gone", "name": "nodule-mask.png"}}}, context)


def test_frame_without_a_nodule_fails_with_a_hint_to_send_an_roi(tmp_path, classifier) -> None:
    rng = np.random.default_rng(0)
    flat = (np.clip(rng.rayleigh(40, (300, 360)), 0, 255)).astype(np.uint8)
    path = _write(tmp_path, "flat.png", png_bytes(flat))
    try:
        output = _run(path, "png", classifier)
    except BadInputError as exc:
        assert "options.roi" in exc.detail
    else:  # a model may still outline something in pure speckle; then the result must be well-formed
        assert output.result.nodule.area_px > 0
