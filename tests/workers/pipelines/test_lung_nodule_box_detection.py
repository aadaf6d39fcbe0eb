"""lung-nodule-detection with a `box-detection` model: boxes in the patch's voxel grid, shifted by the sliding
window, merged across patches by NMS in millimetres, and reported in patient coordinates.

The model is an ONNX graph built here: in each patch it puts a 7-voxel box around the brightest voxel and scores
it with that voxel's windowed value, so a bright blob seen by several overlapping patches must come out once,
where it was drawn.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from app.config import Settings
from app.schemas.manifest import ModelManifest
from app.schemas.tasks import TaskName
from devkit.ct import small_grid, write_series
from tests.utils.onnx_models import graph_model, manifest_for, write_model_folder
from workers.decoding import Boxes, decode_boxes
from workers.local import predict_files
from workers.pipelines.lung_nodule_detection import candidates_from_boxes

PATCH = 32
HALF = 3  # the box spans the brightest voxel +- 3: 7 voxels


def brightest_voxel_detector() -> bytes:
    ints = lambda name, values: (name, np.asarray(values, dtype=np.int64))  # noqa: E731
    nodes = [
        helper.make_node("Reshape", ["ct", "flat_shape"], ["flat"]),
        helper.make_node("ArgMax", ["flat"], ["index"], axis=0, keepdims=1),
        helper.make_node("ReduceMax", ["flat"], ["scores"], keepdims=1),
        helper.make_node("Div", ["index", "plane"], ["z"]),
        helper.make_node("Div", ["index", "side"], ["zy"]),
        helper.make_node("Mod", ["zy", "side"], ["y"]),
        helper.make_node("Mod", ["index", "side"], ["x"]),
        helper.make_node("Concat", ["x", "y", "z"], ["centre"], axis=0),
        helper.make_node("Sub", ["centre", "half"], ["low"]),
        helper.make_node("Add", ["centre", "half_plus_one"], ["high"]),
        helper.make_node("Concat", ["low", "high"], ["corners"], axis=0),
        helper.make_node("Cast", ["corners"], ["corners_float"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["corners_float", "axis0"], ["boxes"]),
        helper.make_node("Sub", ["index", "index"], ["labels"]),
    ]
    return graph_model(
        nodes,
        [("ct", TensorProto.FLOAT, [1, 1, PATCH, PATCH, PATCH])],
        [("boxes", TensorProto.FLOAT, ["n", 6]), ("scores", TensorProto.FLOAT, ["n"]),
         ("labels", TensorProto.INT64, ["n"])],
        [ints("flat_shape", [-1]), ints("plane", [PATCH * PATCH]), ints("side", [PATCH]), ints("half", [HALF]),
         ints("half_plus_one", [HALF + 1]), ints("axis0", [0])],
    )


def box_manifest(onnx_bytes: bytes, **decoding) -> dict:
    return manifest_for(
        "box-detector", "lung-nodule-detection", onnx_bytes,
        accepts={"formats": ["dicom"], "modalities": ["CT"], "samples_per_pixel": [1], "min_rows": 32,
                 "min_columns": 32, "volume": True},
        inputs=[{"name": "ct", "dtype": "float32", "layout": "NCDHW", "shape": [1, 1, PATCH, PATCH, PATCH]}],
        outputs=[{"name": "boxes", "dtype": "float32", "layout": "NB", "shape": ["n", 6]},
                 {"name": "scores", "dtype": "float32", "layout": "N", "shape": ["n"]},
                 {"name": "labels", "dtype": "int64", "layout": "N", "shape": ["n"]}],
        preprocessing={"color_order": "GRAY", "target_spacing_mm": [1.5, 1.5, 1.5], "window_hu": [-1000.0, 400.0],
                       "patch_size": [PATCH, PATCH, PATCH], "patch_overlap": 0.5},
        decoding={"kind": "box-detection", "activation": "none", "box_format": "xyzxyz", "nms_radius_mm": 5.0,
                  "box_outputs": {"boxes": "boxes", "scores": "scores", "labels": "labels"}, **decoding},
        class_names=["nodule"],
    )


@pytest.mark.parametrize("orientation", ["HFS", "FFP"])
def test_box_detection_job_places_the_finding_in_patient_mm(tmp_path, orientation: str) -> None:
    grid = small_grid(n_slices=40, rows=64, columns=64, pixel_spacing=1.5, slice_spacing=1.5,
                      orientation=orientation, centre=(12.0, -30.0, 80.0))
    blob = (20, 25, 40)  # slice, row, column of the brightest voxel
    s, r, c = np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij")
    distance2 = (s - blob[0]) ** 2 + (r - blob[1]) ** 2 + (c - blob[2]) ** 2
    hu = (-800.0 + 900.0 * np.exp(-distance2 / 8.0)).astype(np.float32)  # aerated lung: the CT gate wants some
    paths = write_series(tmp_path / "series", hu, grid)
    onnx_bytes = brightest_voxel_detector()
    write_model_folder(tmp_path / "models", onnx_bytes, box_manifest(onnx_bytes))

    settings = Settings(data_dir=tmp_path / "data", model_repository=tmp_path / "models")
    job, _ = predict_files(settings, TaskName.LUNG_NODULE_DETECTION, paths, None, show_progress=False)

    assert job.status == "succeeded", job.error
    [nodule] = job.result["nodules"]  # seen by 4 overlapping patches, reported once
    expected_mm = grid.to_patient(np.array([blob[2], blob[1], blob[0]], dtype=np.float64))
    np.testing.assert_allclose(nodule["center_mm"], expected_mm, atol=0.05)
    np.testing.assert_allclose(nodule["center_voxel"], (blob[2], blob[1], blob[0]), atol=0.05)
    assert nodule["diameter_mm"] == pytest.approx(7 * 1.5, abs=0.01)  # a 7-voxel cube at 1.5 mm
    low, high = np.asarray(nodule["bbox_mm"])
    np.testing.assert_allclose(high - low, [7 * 1.5] * 3, atol=0.05)
    assert nodule["key_slice"]["index"] == blob[0]
    assert nodule["score"] == pytest.approx(1100 / 1400, abs=0.01)


def test_decode_boxes_reorders_each_box_format_to_array_axes() -> None:
    onnx_bytes = brightest_voxel_detector()
    base = box_manifest(onnx_bytes)
    outputs = {"boxes": np.array([[1, 2, 3, 11, 12, 13]], np.float32), "scores": np.array([0.9], np.float32),
               "labels": np.array([0], np.int64)}
    xyz = decode_boxes(outputs, ModelManifest.model_validate(base))
    assert xyz.low.tolist() == [[3, 2, 1]] and xyz.high.tolist() == [[13, 12, 11]]
    zyx = decode_boxes(outputs, ModelManifest.model_validate({**base, "decoding": {
        **base["decoding"], "box_format": "zyxzyx"}}))
    assert zyx.low.tolist() == [[1, 2, 3]] and zyx.high.tolist() == [[11, 12, 13]]


def test_nms_iou_merges_boxes_whose_centres_lie_apart() -> None:
    # Two 10-voxel cubes 6 voxels apart along x at 1.5 mm: centres 9 mm apart, beyond the radius (5 mm) and the
    # kept one's radius (7.5 mm), so only their overlap (IoU 4/16 = 0.25) can merge them.
    boxes = Boxes(low=np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 6.0]]), high=np.array([[10.0, 10.0, 10.0],
                                                                                    [10.0, 10.0, 16.0]]),
                  scores=np.array([0.6, 0.9]), labels=np.zeros(2, np.int64))
    base = box_manifest(brightest_voxel_detector())
    by_radius = candidates_from_boxes(boxes, (1.5, 1.5, 1.5), ModelManifest.model_validate(base))
    by_iou = candidates_from_boxes(boxes, (1.5, 1.5, 1.5), ModelManifest.model_validate(
        {**base, "decoding": {**base["decoding"], "nms_iou": 0.2}}))

    assert [c.score for c in by_radius] == [0.9, 0.6]
    assert [c.score for c in by_iou] == [0.9]
