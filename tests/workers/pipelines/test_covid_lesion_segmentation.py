"""COVID lesion pipeline steps without Celery: batching, resizing back to the source grid, decoding, figures,
NIfTI alignment with the DICOM geometry, PNG artifacts."""

from __future__ import annotations

import gzip
import io
import json

import numpy as np
import pytest
from PIL import Image

from app.errors import ModelError
from app.schemas.manifest import ModelManifest
from devkit.covid import COVID_MODEL_ID
from devkit.ct import small_grid, write_series
from devkit.reference_models import reference_model_dir
from workers.imaging.ct_series import load_ct_series
from workers.imaging.lungs import LungMask
from workers.imaging.slice_stacks import model_plane, stack_neighbours
from workers.pipelines.covid.artifacts import label_nifti, mask_png, overlay_png, write_artifacts
from workers.pipelines.covid.decode import decode_labels
from workers.pipelines.covid.figures import build_result
from workers.pipelines.covid.inference import predict_labels

MANIFEST_PATH = reference_model_dir(COVID_MODEL_ID) / "1" / "manifest.json"


@pytest.fixture(scope="module")
def manifest() -> ModelManifest:
    return ModelManifest.model_validate_json(MANIFEST_PATH.read_text())


@pytest.fixture(scope="module")
def ffs_ct(tmp_path_factory):
    """A small oblique feet-first series whose HU tell the voxels apart (rows != columns)."""
    s, r, c = np.meshgrid(np.arange(12), np.arange(48), np.arange(64), indexing="ij")
    hu = (-1000.0 + 50.0 * s + 3.0 * r + 1.0 * c).astype(np.float32)
    grid = small_grid(n_slices=12, rows=48, columns=64, orientation="FFS", rotation_deg=10.0, slice_spacing=3.0)
    paths = write_series(tmp_path_factory.mktemp("ffs"), hu, grid, instance_order="descending",
                         shuffle_names=True, rescale="signed")
    return load_ct_series(paths)


def test_predict_labels_batches_as_the_manifest_says_and_returns_the_source_grid(manifest) -> None:
    hu = np.full((19, 100, 90), -850.0, np.float32)
    hu[:, 40:60, 30:50] = 0.0  # dense square: "consolidation"
    seen = []

    def run(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.shape)
        middle = batch[:, batch.shape[1] // 2]  # the slice itself: the middle plane
        logits = np.stack([np.zeros_like(middle), np.zeros_like(middle) - 5, (middle - 0.6) * 50], axis=1)
        return logits.astype(np.float32)

    labels = predict_labels(hu, (0.8, 0.8, 2.5), manifest, run)

    batch = manifest.preprocessing.batch_size
    assert [s[0] for s in seen] == [batch] * (19 // batch) + ([19 % batch] if 19 % batch else [])
    channels = manifest.inputs[0].shape[1]
    assert all(s[1:] == (channels, *manifest.preprocessing.target_size) for s in seen)
    assert labels.shape == hu.shape and labels.dtype == np.uint8
    assert (labels[:, 42:58, 32:48] == 2).all()
    assert (labels[:, :35, :] == 0).all()


def test_predict_labels_at_the_manifests_pixel_spacing_in_overlapping_patches(manifest) -> None:
    """A model trained at a pixel spacing, served in patches: each slice keeps its field of view at 2 mm pixels
    (100 rows of 1 mm -> 50, 90 columns of 1.5 mm -> 68), then slides in 64 x 64 patches overlapping by half."""
    spec = manifest.preprocessing.model_copy(update={"target_size": None, "target_spacing_mm": (5.0, 2.0, 2.0),
                                                     "patch_size": (64, 64), "patch_overlap": 0.5})
    patched = manifest.model_copy(update={"preprocessing": spec})
    hu = np.full((19, 100, 90), -850.0, np.float32)
    hu[:, 40:60, 30:50] = 0.0
    seen = []

    def run(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.shape)
        middle = batch[:, batch.shape[1] // 2]  # the slice itself: the middle plane
        return np.stack([np.zeros_like(middle), np.zeros_like(middle) - 5, (middle - 0.6) * 50], axis=1)

    labels = predict_labels(hu, (1.5, 1.0, 3.0), patched, run)

    assert model_plane(hu.shape[1:], (1.5, 1.0, 3.0), patched) == (50, 68)
    assert all(s[1:] == (manifest.inputs[0].shape[1], 64, 64) and s[0] <= spec.batch_size for s in seen)
    assert sum(s[0] for s in seen) == 19 * 2  # rows padded to one patch, columns two patches (starts 0 and 4)
    assert labels.shape == hu.shape
    assert (labels[:, 42:58, 32:48] == 2).all()
    assert (labels[:, :37, :] == 0).all() and (labels[:, 63:, :] == 0).all()


def test_stack_neighbours_interpolates_planes_at_distances_along_the_normal_from_true_positions() -> None:
    """Slices 2.5 mm apart with one missing (positions 0, 2.5, 7.5, 10, ...): a slice's value is its position,
    so every interpolated plane must read the distance it was asked for, clamped to the series' ends."""
    positions = np.array([0.0, 2.5, 7.5, 10.0, 12.5, 15.0])
    slices = np.broadcast_to(positions[:, None, None], (6, 4, 5)).astype(np.float32)
    offsets = [-10.0, -4.0, 0.0, 4.0, 10.0]

    stacked = stack_neighbours(slices, np.array([1, 2, 5]), 5, positions, offsets)

    assert stacked.shape == (3, 5, 4, 5)
    expected = np.clip(positions[[1, 2, 5]][:, None] + np.array(offsets)[None, :], 0.0, 15.0)
    np.testing.assert_allclose(stacked[:, :, 0, 0], expected, atol=1e-5)
    np.testing.assert_array_equal(stacked[:, 2], slices[[1, 2, 5]])  # offset 0 is the slice itself, untouched
    # Without offsets: the adjacent slices, the ends repeated.
    np.testing.assert_array_equal(stack_neighbours(slices, np.array([0, 5]), 3)[:, :, 0, 0], [[0, 0, 2.5], [12.5, 15, 15]])


def test_a_manifest_whose_slice_offsets_do_not_fill_the_input_channels_is_refused(manifest) -> None:
    from pydantic import ValidationError

    document = json.loads(MANIFEST_PATH.read_text())
    document["preprocessing"]["slice_offsets_mm"] = [-5.0, 0.0, 5.0, 10.0]
    document["inputs"][0]["shape"][1] = 3
    with pytest.raises(ValidationError, match="slice_offsets_mm has 4 planes, but the input 'ct_slices' has 3"):
        ModelManifest.model_validate(document)


def test_a_patch_size_that_is_not_two_dimensional_is_a_model_error(manifest) -> None:
    spec = manifest.preprocessing.model_copy(update={"patch_size": (3, 64, 64)})
    with pytest.raises(ModelError, match="not a 2-D patch"):
        predict_labels(np.zeros((4, 64, 64), np.float32), (1.0, 1.0, 1.0),
                       manifest.model_copy(update={"preprocessing": spec}), lambda batch: batch)


def test_decode_labels_drops_small_and_extrapulmonary_components_and_extends_the_lungs(manifest) -> None:
    lung = np.zeros((10, 40, 40), np.uint8)
    lung[2:8, 5:35, 5:18] = LungMask.RIGHT
    lung[2:8, 5:35, 22:35] = LungMask.LEFT
    raw = np.zeros(lung.shape, np.uint8)
    raw[3:7, 10:20, 2:10] = 2  # consolidation against the chest wall: partly outside the air mask
    raw[4, 30, 30] = 1  # one voxel: below min_component_voxels
    raw[3:7, 36:40, 36:40] = 1  # not touching any lung
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[0, 3] = -20.0  # column 20 at x = 0: columns < 20 are the patient's right

    labels, lungs = decode_labels(raw, LungMask(lung), affine, manifest)

    assert (labels[3:7, 10:20, 2:10] == 2).all()
    assert labels[4, 30, 30] == 0
    assert not labels[:, 36:, 36:].any()
    assert (lungs.labels[3:7, 10:20, 2:5] == LungMask.RIGHT).all()  # the lung grew to hold the lesion


def test_build_result_figures_from_the_true_spacing(manifest, ffs_ct) -> None:
    shape = ffs_ct.hu.shape
    lung = np.zeros(shape, np.uint8)
    lung[:, 4:44, 2:30] = LungMask.RIGHT
    lung[:, 4:44, 34:62] = LungMask.LEFT
    labels = np.zeros(shape, np.uint8)
    labels[0:2, 10:20, 10:20] = 1  # 200 voxels of GGO in the right lung, slices 0-1
    labels[5, 10:20, 40:50] = 2  # 100 voxels of consolidation in the left lung, slice 5

    result = build_result(ffs_ct, labels, LungMask(lung), manifest)

    voxel_ml = 0.7 * 0.7 * 3.0 / 1000
    assert result.lung_volume_ml.right == pytest.approx(12 * 40 * 28 * voxel_ml, abs=0.01)
    assert result.lesion_volume_ml.ggo == pytest.approx(200 * voxel_ml, abs=0.01)
    assert result.lesion_volume_ml.consolidation == pytest.approx(100 * voxel_ml, abs=0.01)
    assert result.involvement_percent.right == pytest.approx(100 * 200 / (12 * 40 * 28), abs=0.01)
    assert result.involvement_percent.total == pytest.approx(100 * 300 / (2 * 12 * 40 * 28), abs=0.01)
    assert result.affected_slices == [0, 1, 5]
    # FFS: slice 0 is the most superior, so slices 0-1 sit in the right lung's upper third.
    assert result.involvement_by_zone.right.upper > 0
    assert result.involvement_by_zone.right.lower == 0
    assert "lobe" in result.definitions["severity"]


def test_label_nifti_reloads_voxel_for_voxel_aligned_with_the_series(ffs_ct) -> None:
    import nibabel as nib

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, ffs_ct.hu.shape).astype(np.uint8)
    image = nib.Nifti1Image.from_bytes(gzip.decompress(label_nifti(labels, ffs_ct.affine)))
    data = np.asarray(image.dataobj)

    assert data.shape == (ffs_ct.geometry.columns, ffs_ct.geometry.rows, ffs_ct.geometry.n_slices)
    geometry = ffs_ct.geometry
    for column, row, index in [(0, 0, 0), (63, 0, 0), (0, 47, 0), (5, 7, 11), (63, 47, 11), (31, 20, 6)]:
        lps = geometry.voxel_to_patient(column, row, index)
        ras = nib.affines.apply_affine(image.affine, (column, row, index))
        assert ras == pytest.approx([-lps[0], -lps[1], lps[2]], abs=1e-3)
        assert data[column, row, index] == labels[index, row, column]
    assert image.header.get_sform(coded=True)[1] == 1


def test_overlay_and_mask_pngs_have_the_source_rows_and_columns(ffs_ct) -> None:
    labels = np.zeros(ffs_ct.hu.shape, np.uint8)
    labels[3, 10:20, 10:30] = 1
    labels[3, 25:30, 40:50] = 2
    overlay = Image.open(io.BytesIO(overlay_png(ffs_ct.hu[3], labels[3])))
    mask = Image.open(io.BytesIO(mask_png(labels[3])))

    assert overlay.size == (64, 48) and overlay.mode == "RGB"
    assert mask.size == (64, 48) and mask.mode == "L"
    pixels = np.asarray(mask)
    assert set(np.unique(pixels[10:20, 10:30])) == {128} and set(np.unique(pixels[25:30, 40:50])) == {255}
    rgb = np.asarray(overlay).astype(int)
    assert rgb[27, 45, 0] > rgb[27, 45, 1] + 40  # consolidation reddened


def test_write_artifacts_names_slices_by_index_and_sop_instance_uid(ffs_ct) -> None:
    labels = np.zeros(ffs_ct.hu.shape, np.uint8)
    labels[4, 10:12, 10:12] = 1
    labels[9, 10:12, 10:12] = 2
    artifacts = {a.name: a for a in write_artifacts(ffs_ct, labels, [4, 9])}

    display = {f"slice-{i:04d}.png" for i in range(ffs_ct.hu.shape[0])}  # every slice, for the review page
    assert set(artifacts) == {"lesions.nii.gz", "slices.json", "slice-0004-mask.png", "slice-0004-overlay.png",
                              "slice-0009-mask.png", "slice-0009-overlay.png"} | display
    shown = Image.open(io.BytesIO(artifacts["slice-0009.png"].data))
    assert shown.mode == "L" and shown.size == ffs_ct.hu.shape[:0:-1]
    document = json.loads(artifacts["slices.json"].data)
    assert [e["index"] for e in document["slices"]] == [4, 9]
    assert document["slices"][1]["sop_instance_uid"] == ffs_ct.geometry.slices[9].sop_instance_uid
    assert document["slices"][1]["overlay"] == "slice-0009-overlay.png"


def test_predict_labels_reads_a_graph_that_gives_probabilities_as_one_that_gives_logits(manifest) -> None:
    """Segmentation as logits (activation softmax) or probabilities (activation none): the same labels."""
    hu = np.full((6, 64, 64), -850.0, np.float32)
    hu[:, 10:30, 10:30], hu[:, 40:60, 30:50] = -550.0, 0.0

    def logits(batch: np.ndarray) -> np.ndarray:
        middle = batch[:, batch.shape[1] // 2]
        return np.stack([np.zeros_like(middle), (0.1 - np.abs(middle - 0.53)) * 100, (middle - 0.75) * 60], axis=1)

    def probabilities(batch: np.ndarray) -> np.ndarray:
        raw = logits(batch)
        exp = np.exp(raw - raw.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    as_probabilities = manifest.model_copy(update={"decoding": manifest.decoding.model_copy(
        update={"activation": "none"})})
    from_logits = predict_labels(hu, (0.8, 0.8, 2.5), manifest, logits)
    from_probabilities = predict_labels(hu, (0.8, 0.8, 2.5), as_probabilities, probabilities)

    assert set(np.unique(from_logits)) == {0, 1, 2}
    np.testing.assert_array_equal(from_logits, from_probabilities)


def test_uncertainty_map_is_written_on_the_source_grid(tmp_path) -> None:
    """options.uncertainty: one flipped run more; the map shares the lesion NIfTI's grid (about 10 s)."""
    import gzip
    import io

    import nibabel as nib
    from PIL import Image

    from app.config import Settings
    from app.schemas.tasks import TaskName
    from devkit.covid import covid_case
    from devkit.ct import write_series
    from workers.local import predict_files

    case = covid_case(2, matrix=96, slice_spacing=5.0)
    paths = write_series(tmp_path / "series", case.hu, case.grid)

    job, artifacts = predict_files(Settings(data_dir=tmp_path / "data"), TaskName.COVID_LESION_SEGMENTATION, paths,
                                   '{"uncertainty": true}', show_progress=False)

    assert job.status == "succeeded", job.error
    assert "uncertainty" in job.stage_seconds
    summary = job.result["uncertainty"]
    assert summary["augmentations"] == ["original", "flip-horizontal"]
    lesions = nib.Nifti1Image.from_bytes(gzip.decompress(artifacts["lesions.nii.gz"]))
    uncertain = nib.Nifti1Image.from_bytes(gzip.decompress(artifacts["uncertainty.nii.gz"]))
    assert uncertain.shape == lesions.shape
    assert np.allclose(uncertain.affine, lesions.affine)
    shares = uncertain.get_fdata()
    assert shares.min() >= 0.0 and shares.max() <= 1.0
    voxel_ml = float(np.prod(job.result["spacing_mm"])) / 1000.0
    assert abs(np.count_nonzero(shares) * voxel_ml - summary["uncertain_volume_ml"]) < 0.01
    with Image.open(io.BytesIO(artifacts["uncertainty.png"])) as picture:
        assert picture.size == (case.hu.shape[2], case.hu.shape[1])
