"""COVID lesion segmentation through the API (embedded and Celery): held-out synthetic scans written as DICOM series.

"Done when": lesion Dice >= 0.80, total lesion volume within 10 % of the truth, involvement within 3 points;
the NIfTI mask, reloaded with nibabel, lines up voxel for voxel with the source series; an overlay PNG has
the source slice's rows and columns.
"""

from __future__ import annotations

import gzip
import io

import numpy as np
import pydicom
import pytest
from PIL import Image

from devkit.api import get_artifact, run_job
from devkit.covid import dice, held_out_case
from devkit.ct import synthetic_ct, zip_bytes
from devkit.services import Service

TASK = "covid-lesion-segmentation"
# Every scan of the model card's test split (never trained on, nor used to choose the model) that has lesions:
# all but scan 3. Coarse and fine matrices, 2.5-5 mm slices, 22 to 726 ml of lesion.
HELD_OUT = (0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11)


@pytest.fixture(scope="module")
def held_out_series(tmp_path_factory):
    """[(case, paths, zip bytes)]: descending instance numbers, random file names, shuffled ZIP members."""
    series = []
    for index in HELD_OUT:
        case = held_out_case(index)
        directory = tmp_path_factory.mktemp(f"covid-{index}")
        paths = synthetic_ct().write_ct_series(case.hu, case.grid, directory, instance_order="descending",
                                               shuffle_names=True, rng=np.random.default_rng(index))
        series.append((case, paths, zip_bytes(paths, shuffle_seed=index)))
    return series


def reloaded_labels(service: Service, job: dict, case) -> np.ndarray:
    """lesions.nii.gz mapped onto the case's grid through nibabel's affine (RAS) and the grid's (LPS)."""
    import nibabel as nib

    response = get_artifact(service, job, "lesions.nii.gz")
    assert response.status_code == 200
    image = nib.Nifti1Image.from_bytes(gzip.decompress(response.content))
    data = np.asarray(image.dataobj)
    # Every voxel of the case's grid → patient LPS → RAS → NIfTI voxel: must be the same (i, j, k).
    n_slices, rows, columns = case.hu.shape
    corners = np.array([[c, r, s] for c in (0, columns - 1) for r in (0, rows - 1) for s in (0, n_slices - 1)], float)
    lps = case.grid.to_patient(corners)
    ras = lps * np.array([-1.0, -1.0, 1.0])
    voxels = nib.affines.apply_affine(np.linalg.inv(image.affine), ras)
    np.testing.assert_allclose(voxels, corners, atol=1e-2)
    return data.transpose(2, 1, 0)  # (column, row, slice) → (slice, row, column) on the case's grid


def test_create_job_covid_segments_held_out_scans_within_tolerances(embedded_service: Service,
                                                                     held_out_series) -> None:
    measured = []
    for case, paths, archive in held_out_series:
        job = run_job(embedded_service, TASK, [("series.zip", archive)], timeout=240)
        assert job["status"] == "succeeded", job
        result = job["result"]
        voxel_ml = float(np.prod(case.grid.spacing)) / 1000.0
        true = case.labels > 0
        assert true.any()

        labels = reloaded_labels(embedded_service, job, case)
        lesion_dice = dice(labels > 0, true)
        volume_error = abs(result["lesion_volume_ml"]["total"] - true.sum() * voxel_ml) / (true.sum() * voxel_ml)
        involvement_error = abs(result["involvement_percent"]["total"] - case.involvement_percent())
        measured.append((lesion_dice, volume_error, involvement_error))

        assert lesion_dice >= 0.80, measured
        assert volume_error <= 0.10, measured
        assert involvement_error <= 3.0, measured
        # The figures are those of the NIfTI mask, from the true voxel spacing.
        assert result["lesion_volume_ml"]["total"] == pytest.approx((labels > 0).sum() * voxel_ml, abs=0.02)
        assert result["affected_slices"] == [int(i) for i in np.nonzero((labels > 0).any(axis=(1, 2)))[0]]
        assert result["research_use_only"] is True
        assert result["series_instance_uid"] == str(pydicom.dcmread(paths[0]).SeriesInstanceUID)


def test_create_job_covid_lists_slice_artifacts_by_index_and_sop_instance_uid(celery_service: Service,
                                                                                held_out_series) -> None:
    case, paths, archive = held_out_series[0]
    job = run_job(celery_service, TASK, [("series.zip", archive)], timeout=240)
    assert job["status"] == "succeeded", job
    affected = job["result"]["affected_slices"]
    assert affected
    names = {a["name"] for a in job["artifacts"]}
    expected = {"lesions.nii.gz", "slices.json", "seg.dcm"}
    expected |= {f"slice-{i:04d}-{kind}.png" for i in affected for kind in ("mask", "overlay")}
    expected |= {f"slice-{i:04d}.png" for i in range(job["result"]["n_slices"])}  # display slices
    assert names == expected
    assert set(job["stage_seconds"]) == {"load", "quality", "lungs", "infer", "decode", "outputs"}

    document = get_artifact(celery_service, job, "slices.json").json()
    uid_of_position = {}
    for path in paths:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        uid_of_position[round(float(header.ImagePositionPatient[2]), 2)] = str(header.SOPInstanceUID)
    for entry in document["slices"]:
        # Slice index i is the grid's slice i (sorted along the normal; the grid's normal is its own order).
        z = round(float(case.grid.slice_position(entry["index"])[2]), 2)
        assert entry["sop_instance_uid"] == uid_of_position[z]
    middle = document["slices"][len(document["slices"]) // 2]
    overlay = Image.open(io.BytesIO(get_artifact(celery_service, job, middle["overlay"]).content))
    assert overlay.size == (case.hu.shape[2], case.hu.shape[1])
    mask = np.asarray(Image.open(io.BytesIO(get_artifact(celery_service, job, middle["mask"]).content)))
    assert mask.shape == case.hu.shape[1:] and mask.any()
