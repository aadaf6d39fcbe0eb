"""The runner's DICOM step: real jobs through intake and runner (workers/local.py), real reference models."""

from __future__ import annotations

import io

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes

from app.config import Settings
from app.schemas.tasks import TaskName
from tests.utils.dicom_validation import dciodvfy_errors
from devkit.fundus import make_fundus, png_bytes
from devkit.ultrasound import dicom_us_bytes, make_frame
from workers.local import predict_files


def test_thyroid_job_on_dicom_writes_seg_and_sr(tmp_path) -> None:
    item = make_frame(3)
    path = tmp_path / "us.dcm"
    path.write_bytes(dicom_us_bytes(item.frame, pixel_spacing_mm=0.1))
    source = pydicom.dcmread(path)

    job, artifacts = predict_files(Settings(data_dir=tmp_path / "data"), TaskName.THYROID_MALIGNANCY, [path], None,
                                   show_progress=False)

    assert job.status == "succeeded", job.error
    assert job.notes == []
    media = {a.name: a.media_type for a in job.artifacts}
    assert media["seg.dcm"] == media["sr.dcm"] == "application/dicom"
    seg = hd.seg.segread(io.BytesIO(artifacts["seg.dcm"]))
    assert seg.get_source_image_uids()[0][2] == source.SOPInstanceUID
    assert int(seg.pixel_array.astype(bool).sum()) == job.result["nodule"]["area_px"]
    sr = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(io.BytesIO(artifacts["sr.dcm"])))
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    (group,) = sr.content.get_image_measurement_groups()
    (probability,) = group.get_measurements(name=codes.DCM.ProbabilityOfCancer)
    assert abs(probability.value - job.result["malignancy_probability"]) < 1e-6
    for name in ("seg.dcm", "sr.dcm"):  # last: only this conformance check skips without dicom3tools
        assert dciodvfy_errors(artifacts[name], tmp_path, name) == []


def test_png_input_gets_no_dicom_results_and_a_note(tmp_path) -> None:
    path = tmp_path / "fundus.png"
    path.write_bytes(png_bytes(make_fundus(0, size=256).rgb))

    job, artifacts = predict_files(Settings(data_dir=tmp_path / "data"), TaskName.DR_GRADING, [path], None,
                                   show_progress=False)

    assert job.status == "succeeded", job.error
    assert "sr.dcm" not in artifacts and "seg.dcm" not in artifacts
    assert len(job.notes) == 1 and "PNG" in job.notes[0]


def test_covid_job_writes_seg_over_the_source_slices(tmp_path) -> None:
    from devkit.covid import held_out_case
    from devkit.ct import synthetic_ct

    case = held_out_case(1)
    paths = synthetic_ct().write_ct_series(case.hu, case.grid, tmp_path / "series", instance_order="descending")
    sources = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths}

    job, artifacts = predict_files(Settings(data_dir=tmp_path / "data"), TaskName.COVID_LESION_SEGMENTATION, paths,
                                   None, show_progress=False)

    assert job.status == "succeeded", job.error
    seg = hd.seg.segread(io.BytesIO(artifacts["seg.dcm"]))
    labels = [seg.get_segment_description(n).SegmentLabel for n in seg.segment_numbers]
    assert labels[:2] == ["ground-glass", "consolidation"] or {"ground-glass", "consolidation"} <= set(labels)
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    assert referenced and referenced <= sources
    assert seg.StudyInstanceUID == pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID
    assert dciodvfy_errors(artifacts["seg.dcm"], tmp_path, "seg.dcm") == []  # last: skips without dicom3tools


def test_dr_explain_on_dicom_writes_saliency_on_the_source_grid(tmp_path) -> None:
    """options.explain: saliency.png and a Secondary Capture, both with the source photo's rows and columns."""
    from PIL import Image

    from devkit.fundus import dicom_fundus_bytes

    path = tmp_path / "eye.dcm"
    path.write_bytes(dicom_fundus_bytes(make_fundus(4, size=480).rgb))
    source = pydicom.dcmread(path)

    job, artifacts = predict_files(Settings(data_dir=tmp_path / "data"), TaskName.DR_GRADING, [path],
                                   '{"explain": true}', show_progress=False)

    assert job.status == "succeeded", job.error
    assert {"uncertainty", "saliency"} <= set(job.stage_seconds)  # uncertainty is on by default for DR
    assert job.result["uncertainty"]["augmentations"][0] == "original"
    with Image.open(io.BytesIO(artifacts["saliency.png"])) as overlay:
        assert overlay.size == (source.Columns, source.Rows)
    sc = pydicom.dcmread(io.BytesIO(artifacts["saliency.dcm"]))
    assert (sc.Rows, sc.Columns) == (source.Rows, source.Columns)
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    # last: only this conformance check skips without dicom3tools, never the content checks above
    assert dciodvfy_errors(artifacts["saliency.dcm"], tmp_path, "saliency.dcm") == []


def test_ungradable_photo_succeeds_without_a_grade_and_says_so(tmp_path) -> None:
    import numpy as np

    path = tmp_path / "black.png"
    path.write_bytes(png_bytes(np.zeros((600, 600, 3), np.uint8)))

    job, artifacts = predict_files(Settings(data_dir=tmp_path / "data"), TaskName.DR_GRADING, [path], None,
                                   show_progress=False)

    assert job.status == "succeeded", job.error
    assert set(job.result) == {"task", "quality", "research_use_only"}
    assert job.result["quality"]["gradable"] is False
    assert [r["code"] for r in job.result["quality"]["reasons"]] == ["no-field-of-view"]
    assert artifacts == {}
    assert job.notes and job.notes[0].startswith("Not graded")


def test_thyroid_explain_writes_saliency_on_the_frame_grid(tmp_path) -> None:
    from PIL import Image

    item = make_frame(5)
    path = tmp_path / "us.png"
    path.write_bytes(png_bytes(item.frame))

    job, artifacts = predict_files(Settings(data_dir=tmp_path / "data"), TaskName.THYROID_MALIGNANCY, [path],
                                   '{"explain": true}', show_progress=False)

    assert job.status == "succeeded", job.error
    assert job.result["quality"]["gradable"] is True
    assert 0.0 <= job.result["uncertainty"]["probability_spread"] <= 1.0
    with Image.open(io.BytesIO(artifacts["saliency.png"])) as overlay:
        assert overlay.size == (item.frame.shape[1], item.frame.shape[0])
