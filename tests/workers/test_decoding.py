"""workers/decoding.py on hand-worked inputs: multi-label findings each at its own operating point, and 2-D
box-detection outputs reordered to array axes (rows, columns)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.errors import ModelError
from app.schemas.manifest import ModelManifest
from tests.utils.onnx_models import manifest_for
from workers.decoding import decode_boxes, multilabel_decisions, suppress_overlaps

FINDINGS = ["effusion", "nodule", "pneumothorax"]


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def multilabel_manifest(**decoding) -> ModelManifest:
    return ModelManifest.model_validate(manifest_for(
        "findings", "dr-grading", b"onnx", class_names=FINDINGS,
        outputs=[{"name": "logits", "dtype": "float32", "layout": "NC", "shape": ["batch", 3]}],
        decoding={"kind": "multilabel-sigmoid", "activation": "sigmoid", **decoding},
        operating_points=[{"name": "default", "threshold": 0.4, "measured_on": "nothing (test)"}]))


def test_each_finding_is_decided_at_its_own_threshold_else_the_default_operating_point() -> None:
    manifest = multilabel_manifest(class_thresholds={"nodule": 0.7})
    decisions = multilabel_decisions(np.array([_logit(0.5), _logit(0.6), _logit(0.1)]), manifest)

    assert [d.name for d in decisions] == FINDINGS
    assert [d.threshold for d in decisions] == [0.4, 0.7, 0.4]  # nodule's own, the others the default's
    assert [d.probability for d in decisions] == pytest.approx([0.5, 0.6, 0.1])
    assert [d.present for d in decisions] == [True, False, False]  # 0.6 < nodule's 0.7 though > 0.4


def test_a_probability_exactly_at_the_operating_point_is_present() -> None:
    manifest = multilabel_manifest(activation="none")  # the graph gives probabilities: no sigmoid on top
    decisions = multilabel_decisions(np.array([0.4, 0.39999, 1.2]), manifest)

    assert [d.present for d in decisions] == [True, False, True]
    assert decisions[2].probability == 1.0  # clipped into [0, 1]


def test_the_callers_threshold_overrides_every_findings_own() -> None:
    manifest = multilabel_manifest(class_thresholds={"nodule": 0.7})
    decisions = multilabel_decisions(np.array([_logit(0.5), _logit(0.6), _logit(0.1)]), manifest, 0.55)

    assert {d.threshold for d in decisions} == {0.55}
    assert [d.present for d in decisions] == [False, True, False]


def test_outputs_not_one_per_class_name_are_a_model_error() -> None:
    with pytest.raises(ModelError, match="2 outputs for 3 class_names"):
        multilabel_decisions(np.zeros((1, 2)), multilabel_manifest())


def box_manifest_2d(box_format: str = "xyxy", activation: str = "none") -> ModelManifest:
    return ModelManifest.model_validate(manifest_for(
        "boxes-2d", "lung-nodule-detection", b"onnx", class_names=["nodule"],
        outputs=[{"name": "boxes", "dtype": "float32", "layout": "NB", "shape": ["n", 4]},
                 {"name": "scores", "dtype": "float32", "layout": "N", "shape": ["n"]}],
        decoding={"kind": "box-detection", "activation": activation, "box_format": box_format,
                  "nms_radius_mm": 5.0, "box_outputs": {"boxes": "boxes", "scores": "scores"}}))


def test_2d_xyxy_boxes_come_back_as_row_column_ranges() -> None:
    # (x1, y1, x2, y2) = (column, row) corners: box 0 spans columns 10-30 and rows 5-15.
    outputs = {"boxes": np.array([[10, 5, 30, 15], [0, 0, 4, 8]], np.float32),
               "scores": np.array([0.9, 0.2], np.float32)}
    boxes = decode_boxes(outputs, box_manifest_2d())

    assert len(boxes) == 2
    assert boxes.low.tolist() == [[5, 10], [0, 0]] and boxes.high.tolist() == [[15, 30], [8, 4]]
    assert boxes.scores.tolist() == pytest.approx([0.9, 0.2])
    assert boxes.labels.tolist() == [0, 0]  # the model gives no labels
    yx = decode_boxes(outputs, box_manifest_2d("yxyx"))
    assert yx.low.tolist() == [[10, 5], [0, 0]] and yx.high.tolist() == [[30, 15], [4, 8]]
    moved = boxes.shifted((100, 200))  # a patch's origin in the input grid
    assert moved.low.tolist() == [[105, 210], [100, 200]]


def test_no_boxes_and_a_leading_batch_axis_decode_to_none() -> None:
    outputs = {"boxes": np.zeros((1, 0, 4), np.float32), "scores": np.zeros((1, 0), np.float32)}
    boxes = decode_boxes(outputs, box_manifest_2d())

    assert len(boxes) == 0 and boxes.low.shape == (0, 2)


def test_sigmoid_scores_are_activated_and_inverted_corners_refused() -> None:
    outputs = {"boxes": np.array([[0, 0, 2, 2]], np.float32), "scores": np.array([0.0], np.float32)}
    assert decode_boxes(outputs, box_manifest_2d(activation="sigmoid")).scores.tolist() == [0.5]

    with pytest.raises(ModelError, match="upper corner"):
        decode_boxes({**outputs, "boxes": np.array([[5, 0, 2, 2]], np.float32)}, box_manifest_2d())
    with pytest.raises(ModelError, match="4 numbers per box"):
        decode_boxes({**outputs, "boxes": np.zeros((1, 6), np.float32)}, box_manifest_2d())


def test_suppress_overlaps_drops_by_iou_or_centre_distance_best_first() -> None:
    # Boxes in mm, (y, x): b overlaps a by IoU 0.6; c is small, centred 1 mm from a; d lies apart.
    low = np.array([[0.0, 0.0], [0.0, 2.5], [4.0, 5.0], [30.0, 30.0]])
    high = np.array([[10.0, 10.0], [10.0, 12.5], [6.0, 7.0], [40.0, 40.0]])
    scores = np.array([0.5, 0.9, 0.8, 0.1])

    assert suppress_overlaps(low, high, scores, None, None) == [1, 2, 0, 3]
    assert suppress_overlaps(low, high, scores, 0.5, None) == [1, 2, 3]  # a goes: IoU 0.6 with the better b
    assert suppress_overlaps(low, high, scores, 0.7, None) == [1, 2, 0, 3]
    # b's centre (5, 7.5) and c's (5, 6) are 1.5 mm apart: c goes by radius; a (5, 5) is 2.5 mm from b.
    assert suppress_overlaps(low, high, scores, None, 2.0) == [1, 0, 3]
