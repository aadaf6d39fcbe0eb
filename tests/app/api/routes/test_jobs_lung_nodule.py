"""Lung-nodule detection through the API (embedded and Celery) and `medimg predict`, and its 422s at the door.

The "done when" series: 0.7 mm pixels, 2.5 mm slices, instance numbers running down the patient (descending
z), shuffled file names inside a ZIP in shuffled member order — every nodule of 6 mm or more must be found
with its centre within 3 mm and its diameter within 30 % of the truth.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from devkit.api import get_artifact, run_job, submit_job
from devkit.ct import nodule_scan, ramp_volume, small_grid, synthetic_ct, write_series, zip_bytes
from devkit.reference_models import REPO_ROOT
from devkit.services import Service

TASK = "lung-nodule-detection"
PROBLEM = "application/problem+json"
CENTRE_TOLERANCE_MM = 3.0
DIAMETER_TOLERANCE = 0.30


@pytest.fixture(params=["embedded", "celery"])
def service(request) -> Service:
    return request.getfixturevalue(f"{request.param}_service")


@pytest.fixture(scope="module")
def nodule_series(tmp_path_factory):
    """(scan, paths, zip bytes): descending instance numbers, random file names, shuffled ZIP members."""
    scan = nodule_scan(seed=7)
    directory = tmp_path_factory.mktemp("nodule-series")
    paths = synthetic_ct().write_ct_series(scan.hu, scan.grid, directory, instance_order="descending",
                                           shuffle_names=True, rng=np.random.default_rng(11))
    return scan, paths, zip_bytes(paths, shuffle_seed=5)


def assert_nodules_found(result: dict, scan) -> None:
    large = [n for n in scan.nodules if n.diameter_mm >= 6]
    assert large, "the test series must hold nodules of 6 mm or more"
    for nodule in large:
        distances = [np.linalg.norm(np.subtract(f["center_mm"], nodule.centre_mm)) for f in result["nodules"]]
        assert distances, f"no findings at all; nodule {nodule}"
        best = result["nodules"][int(np.argmin(distances))]
        assert min(distances) <= CENTRE_TOLERANCE_MM, (nodule, result["nodules"])
        assert abs(best["diameter_mm"] - nodule.diameter_mm) <= DIAMETER_TOLERANCE * nodule.diameter_mm, (
            nodule, best)


def assert_geometry_consistent(result: dict, scan, paths: list[Path]) -> None:
    uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in paths}
    assert result["n_slices"] == len(paths)
    assert result["spacing_mm"] == pytest.approx([0.7, 0.7, 2.5], abs=1e-3)
    for finding in result["nodules"]:
        # center_voxel and center_mm agree through the scan's own geometry.
        column, row, slice_index = finding["center_voxel"]
        sorted_index = slice_index  # sorted along the normal: for an HFS grid that is the grid's own order
        np.testing.assert_allclose(scan.grid.to_patient(np.array([column, row, sorted_index])),
                                   finding["center_mm"], atol=0.05)
        key = finding["key_slice"]
        assert key["sop_instance_uid"] in uids
        header = pydicom.dcmread(uids[key["sop_instance_uid"]], stop_before_pixels=True)
        z = float(header.ImagePositionPatient[2])
        assert abs(z - finding["center_mm"][2]) <= 2.5 / 2 + 1e-3  # the key slice is the nearest slice


def test_create_job_lung_nodule_finds_nodules_in_patient_mm(service: Service, nodule_series) -> None:
    scan, paths, archive = nodule_series

    job = run_job(service, TASK, [("series.zip", archive)], timeout=240)

    assert job["status"] == "succeeded", job
    result = job["result"]
    assert result["series_instance_uid"] == str(pydicom.dcmread(paths[0]).SeriesInstanceUID)
    assert result["research_use_only"] is True
    assert_nodules_found(result, scan)
    assert_geometry_consistent(result, scan, paths)
    assert set(job["stage_seconds"]) == {"load", "quality", "preprocess", "infer", "decode", "outputs"}
    overlays = {a["name"] for a in job["artifacts"] if a["name"].startswith("nodule-")}
    assert overlays == {f"nodule-{n['id']}.png" for n in result["nodules"]}
    overlay = get_artifact(service, job, "nodule-1.png")
    assert overlay.status_code == 200 and overlay.content.startswith(b"\x89PNG")
    # A display PNG per slice, at the series' matrix, for the review page's slice scroller.
    display = {a["name"] for a in job["artifacts"] if a["name"].endswith(".png") and a["name"].startswith("slice-")}
    assert display == {f"slice-{i:04d}.png" for i in range(result["n_slices"])}
    key_slice = get_artifact(service, job, f"slice-{result['nodules'][0]['key_slice']['index']:04d}.png")
    header = pydicom.dcmread(paths[0], stop_before_pixels=True)
    assert Image.open(io.BytesIO(key_slice.content)).size == (header.Columns, header.Rows)


def test_create_job_lung_nodule_honours_score_threshold(embedded_service: Service, nodule_series) -> None:
    _, _, archive = nodule_series
    job = run_job(embedded_service, TASK, [("series.zip", archive)], options={"score_threshold": 0.999},
                  timeout=240)
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert result["operating_point"] == {"name": "caller", "threshold": 0.999, "sensitivity": None,
                                         "specificity": None, "sensitivity_ci95": None, "specificity_ci95": None,
                                         "measured_on": None, "overridden": True}
    assert all(n["score"] >= 0.999 for n in result["nodules"])


def test_predict_lung_nodule_series_from_the_command_line(tmp_path: Path, nodule_series) -> None:
    scan, _, archive = nodule_series
    upload = tmp_path / "series.zip"
    upload.write_bytes(archive)
    out = tmp_path / "out"

    completed = subprocess.run(
        [sys.executable, "-m", "app.cli", "predict", "--task", TASK, str(upload), "--out", str(out), "--no-progress"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
    )

    assert completed.returncode == 0, completed.stderr[-3000:]
    document = json.loads(completed.stdout)
    assert document["status"] == "succeeded"
    assert_nodules_found(document["result"], scan)
    assert (out / "nodule-1.png").read_bytes().startswith(b"\x89PNG")


# --- refusals at the door -------------------------------------------------------------------------


def _series_paths(directory: Path, n_slices: int = 6, **kwargs) -> list[Path]:
    grid = small_grid(n_slices=n_slices, rows=64, columns=64)
    return write_series(directory, ramp_volume(n_slices, 64, 64), grid, **kwargs)


def _files(paths: list[Path]) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in paths]


def _assert_refused(service: Service, files, *phrases: str, options: dict | None = None) -> dict:
    response = submit_job(service, TASK, files, options)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    problem = response.json()
    assert problem["code"] == "unsuitable-input"
    for phrase in phrases:
        assert phrase in problem["detail"], problem["detail"]
    return problem


def test_create_job_lung_nodule_refuses_two_series(embedded_service: Service, tmp_path: Path) -> None:
    sc = synthetic_ct()
    ids = sc.SeriesIds.new(), sc.SeriesIds.new()
    paths = (_series_paths(tmp_path / "a", ids=ids[0], description="Lung")
             + _series_paths(tmp_path / "b", n_slices=4, ids=ids[1], description="Soft tissue"))

    problem = _assert_refused(embedded_service, [("both.zip", zip_bytes(paths))], "2 series",
                              "options.series_instance_uid", ids[0].series_instance_uid, ids[1].series_instance_uid,
                              "series 2 of the upload", "4 slices")
    # SeriesDescription is free text that often holds names: series are named by position, never by it.
    assert "Soft tissue" not in problem["detail"] and "Lung" not in problem["detail"]
    assert {s["series_instance_uid"] for s in problem["series"]} == {i.series_instance_uid for i in ids}

    chosen = submit_job(embedded_service, TASK, _files(paths), {"series_instance_uid": ids[0].series_instance_uid})
    assert chosen.status_code == 202, chosen.text


def test_create_job_lung_nodule_refuses_a_non_ct_series(embedded_service: Service, tmp_path: Path) -> None:
    _assert_refused(embedded_service, _files(_series_paths(tmp_path, modality="MR")), "Modality MR", "needs CT")


def test_create_job_lung_nodule_refuses_a_single_slice(embedded_service: Service, tmp_path: Path) -> None:
    _assert_refused(embedded_service, _files(_series_paths(tmp_path, n_slices=1)), "single slice")


def test_create_job_lung_nodule_refuses_inconsistent_orientation(embedded_service: Service, tmp_path: Path) -> None:
    grid = small_grid(rows=64, columns=64)
    orientations = [list(grid.row_dir) + list(grid.col_dir)] * 6
    orientations[2] = [0, 1, 0, 0, 0, -1]  # one sagittal slice
    paths = write_series(tmp_path, ramp_volume(6, 64, 64), grid, orientations=orientations)
    _assert_refused(embedded_service, _files(paths), "mixes 2 slice orientations")


def test_create_job_lung_nodule_refuses_gantry_tilt(embedded_service: Service, tmp_path: Path) -> None:
    grid = small_grid(rows=64, columns=64)
    positions = [grid.slice_position(i) + np.array([0.0, 0.6 * i, 0.0]) for i in range(6)]
    paths = write_series(tmp_path, ramp_volume(6, 64, 64), grid, positions=positions)
    _assert_refused(embedded_service, _files(paths), "gantry tilt")
