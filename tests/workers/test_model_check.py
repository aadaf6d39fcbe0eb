"""`medimg models check`: every shipped model passes; each kind of mismatch is named exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
from onnx import TensorProto, helper

from app.cli import main
from tests.utils.onnx_models import (
    fixed_box_detector,
    graph_model,
    linear_classifier,
    manifest_for,
    write_model_folder,
)
from devkit.reference_models import REPO_ROOT
from workers.model_check import check_folder, check_folders


def failed(folder: Path) -> dict[str, str]:
    return {step.name: step.detail for step in check_folder(folder).steps if step.status == "failed"}


def test_check_passes_every_shipped_model() -> None:
    checks = check_folders([REPO_ROOT / "models"])
    assert len(checks) == len(list((REPO_ROOT / "models").glob("*/*/manifest.json")))
    for check in checks:
        assert check.passed, check.render()
        assert [s.status for s in check.steps] == ["ok"] * 5, check.render()


def test_check_names_a_wrong_output_name(tmp_path: Path) -> None:
    onnx_bytes = linear_classifier()
    manifest = manifest_for("wrong-name", "dr-grading", onnx_bytes, outputs=[
        {"name": "scores", "dtype": "float32", "layout": "NC", "shape": ["batch", 5]}])
    problems = failed(write_model_folder(tmp_path, onnx_bytes, manifest))
    assert problems == {"graph": "outputs[0] 'scores': no such output in the graph; the graph's outputs are "
                                 "['logits']"}


def test_check_names_a_wrong_rank(tmp_path: Path) -> None:
    onnx_bytes = linear_classifier()
    manifest = manifest_for("wrong-rank", "dr-grading", onnx_bytes, outputs=[
        {"name": "logits", "dtype": "float32", "layout": "NCX", "shape": ["batch", 5, 1]}])
    problems = failed(write_model_folder(tmp_path, onnx_bytes, manifest))
    assert problems == {"graph": "outputs[0] 'logits': rank 3 (NCX, ['batch', 5, 1]) in the manifest, rank 2 "
                                 "(['batch', 5]) in the graph"}


def test_check_names_a_wrong_dtype_and_a_wrong_size(tmp_path: Path) -> None:
    onnx_bytes = linear_classifier()
    manifest = manifest_for("wrong-dtype", "dr-grading", onnx_bytes, inputs=[
        {"name": "image", "dtype": "float16", "layout": "NCHW", "shape": ["batch", 1, 8, 16]}])
    problems = failed(write_model_folder(tmp_path, onnx_bytes, manifest))
    assert problems == {"graph": "inputs[0] 'image': dtype float16 in the manifest, tensor(float) in the graph\n"
                                 "inputs[0] 'image': axis 3 (W) is 16 in the manifest, 8 in the graph"}


def test_check_names_a_stale_sha256(tmp_path: Path) -> None:
    onnx_bytes = linear_classifier()
    manifest = manifest_for("stale", "dr-grading", onnx_bytes, sha256="0" * 64)
    folder = write_model_folder(tmp_path, onnx_bytes, manifest)
    check = check_folder(folder)
    [step] = [s for s in check.steps if s.status == "failed"]
    assert step.name == "sha256"
    assert step.detail.startswith(f"sha256: the manifest says {'0' * 64}, model.onnx is {manifest_for('x', 'dr-grading', onnx_bytes)['sha256']}")


def test_check_names_an_unsupported_opset(tmp_path: Path) -> None:
    onnx_bytes = graph_model([helper.make_node("Identity", ["image"], ["logits"])],
                             [("image", TensorProto.FLOAT, ["batch", 5])], [("logits", TensorProto.FLOAT, ["batch", 5])],
                             opset=99)
    manifest = manifest_for("future", "dr-grading", onnx_bytes, inputs=[
        {"name": "image", "dtype": "float32", "layout": "NC", "shape": ["batch", 5]}])
    check = check_folder(write_model_folder(tmp_path, onnx_bytes, manifest))
    problems = {s.name: s.detail for s in check.steps if s.status == "failed"}
    assert list(problems) == ["opset"]
    assert problems["opset"].startswith("the graph imports ai.onnx opset 99; ONNX Runtime ")
    assert "supports ai.onnx up to opset" in problems["opset"]
    assert [s.status for s in check.steps if s.name in ("graph", "inference")] == ["skipped", "skipped"]


def test_check_names_manifest_schema_errors(tmp_path: Path) -> None:
    onnx_bytes = linear_classifier()
    manifest = manifest_for("bad-schema", "no-such-task", onnx_bytes)
    problems = failed(write_model_folder(tmp_path, onnx_bytes, manifest))
    assert list(problems) == ["manifest"]
    assert problems["manifest"].startswith("task: Input should be")
    assert "(the manifest has \"no-such-task\")" in problems["manifest"]


def test_cli_models_check_exits_non_zero_with_a_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    onnx_bytes = linear_classifier()
    good = write_model_folder(tmp_path, onnx_bytes, manifest_for("good", "dr-grading", onnx_bytes))
    bad = write_model_folder(tmp_path, onnx_bytes, manifest_for("bad", "dr-grading", onnx_bytes, sha256="f" * 64))
    assert main(["models", "check", str(good)]) == 0
    assert main(["models", "check", str(good), str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"{bad}: FAIL" in out and f"{good}: PASS" in out and " ms " in out


def ultrasound_detector_folder(root: Path, box_format: str = "xyxy", boxes=((20, 10, 120, 60), (0, 0, 8, 8)),
                               boxes_shape=("n", 4)) -> Path:
    """A letterboxed 2-D nodule detector for the thyroid cascade, answering fixed boxes in input pixels."""
    onnx_bytes = fixed_box_detector([list(b) for b in boxes], [0.9, 0.4][:len(boxes)], [0] * len(boxes),
                                    [1, 3, 192, 320])
    return write_model_folder(root, onnx_bytes, manifest_for(
        "us-detector", "thyroid-malignancy", onnx_bytes, class_names=["nodule"],
        inputs=[{"name": "images", "dtype": "float32", "layout": "NCHW", "shape": [1, 3, 192, 320]}],
        outputs=[{"name": "boxes", "dtype": "float32", "layout": "NB", "shape": list(boxes_shape)},
                 {"name": "scores", "dtype": "float32", "layout": "N", "shape": ["n"]},
                 {"name": "labels", "dtype": "int64", "layout": "N", "shape": ["n"]}],
        preprocessing={"color_order": "RGB", "crop": "imaging-region", "target_size": [192, 320],
                       "resize": "letterbox", "letterbox_fill": 114},
        decoding={"kind": "box-detection", "activation": "none", "box_format": box_format, "nms_iou": 0.5,
                  "box_outputs": {"boxes": "boxes", "scores": "scores", "labels": "labels"}}))


def test_check_passes_a_2d_box_detector_and_says_where_its_boxes_lie(tmp_path: Path) -> None:
    folder = ultrasound_detector_folder(tmp_path)
    check = check_folder(folder)

    assert [s.status for s in check.steps] == ["ok"] * 5, check.render()
    inference = next(s.detail for s in check.steps if s.name == "inference")
    assert inference.endswith("decode: 2 box(es) in xyxy spanning rows 0.0..60.0 of 192, columns 0.0..120.0 of "
                              "320 (input indices), best score 0.900")
    assert main(["models", "check", str(folder)]) == 0


def test_check_names_a_box_format_that_does_not_fit_the_graph(tmp_path: Path) -> None:
    three_d = failed(ultrasound_detector_folder(tmp_path / "a", box_format="xyzxyz", boxes_shape=("n", 6),
                                                boxes=((1, 2, 3, 4, 5, 6),)))
    assert three_d == {"manifest": "(document): Value error, decoding.box_format xyzxyz is 3-D, but the input "
                                   "'images' (NCHW) has 2 spatial axes"}
    six_numbers = failed(ultrasound_detector_folder(tmp_path / "b", boxes_shape=("n", 6)))
    assert six_numbers == {"manifest": "(document): Value error, decoding.box_format xyxy has 4 numbers per box, "
                                       "but the output 'boxes' has shape ['n', 6]: 6 per box"}


def test_check_names_boxes_that_look_normalised(tmp_path: Path) -> None:
    check = check_folder(ultrasound_detector_folder(tmp_path, boxes=((0.1, 0.2, 0.4, 0.5),)))

    assert check.passed, check.render()
    assert "every box lies within 0..1: box-detection reads pixel index ranges" in check.render()
