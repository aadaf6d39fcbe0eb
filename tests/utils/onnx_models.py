"""Model folders built in tests: ONNX graphs from the onnx helper API, with a manifest that describes them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def graph_model(nodes, inputs, outputs, initializers=(), opset: int = OPSET) -> bytes:
    """Serialized ModelProto; `inputs`/`outputs` are (name, TensorProto type, shape) triples."""
    graph = helper.make_graph(
        nodes, "test_graph",
        [helper.make_tensor_value_info(name, dtype, shape) for name, dtype, shape in inputs],
        [helper.make_tensor_value_info(name, dtype, shape) for name, dtype, shape in outputs],
        [numpy_helper.from_array(np.asarray(value), name) for name, value in initializers],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="medimg-tests")
    model.ir_version = 8
    return model.SerializeToString()


def linear_classifier(classes: int = 5, size: int = 8) -> bytes:
    """image float32 [batch, 1, size, size] -> logits float32 [batch, classes]: mean of the image times 1..K."""
    return graph_model(
        [helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
         helper.make_node("MatMul", ["features", "weights"], ["logits"])],
        [("image", TensorProto.FLOAT, ["batch", 1, size, size])],
        [("logits", TensorProto.FLOAT, ["batch", classes])],
        [("weights", np.arange(1, classes + 1, dtype=np.float32)[np.newaxis])],
    )


def manifest_for(model_id: str, task: str, onnx_bytes: bytes, **fields) -> dict:
    """A complete manifest for a small grey-image model; `fields` replace top-level keys."""
    manifest = {
        "id": model_id, "version": 1, "task": task, "title": f"test model {model_id}",
        "intended_use": "tests", "research_use_only": True, "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "accepts": {"formats": ["png"], "samples_per_pixel": [1, 3]},
        "inputs": [{"name": "image", "dtype": "float32", "layout": "NCHW", "shape": ["batch", 1, 8, 8]}],
        "outputs": [{"name": "logits", "dtype": "float32", "layout": "NC", "shape": ["batch", 5]}],
        "preprocessing": {"color_order": "GRAY"},
        "decoding": {"kind": "ordinal-grade", "activation": "softmax", "positive_classes": [2, 3, 4]},
        "class_names": ["0", "1", "2", "3", "4"],
        "operating_points": [{"name": "default", "threshold": 0.5, "measured_on": "nothing (test)"}],
        "default_operating_point": "default",
        "provenance": {"created": "2026-12-02", "framework": "onnx helper", "training_data": "none",
                       "training_script": "tests/utils/onnx_models.py"},
    }
    manifest.update(fields)
    return manifest


def write_model_folder(repository: Path, onnx_bytes: bytes, manifest: dict) -> Path:
    folder = repository / manifest["id"] / str(manifest["version"])
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(onnx_bytes)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (folder / "CARD.md").write_text(f"# {manifest['id']}\n\nA model built by a test.\n")
    return folder


def fixed_box_detector(boxes, scores, labels, input_shape: list[int], input_name: str = "images") -> bytes:
    """An exported 2-D detector's interface, answering fixed boxes whatever the image: `input_name` float32
    `input_shape` -> boxes float32 [N, 4] (as given, in model-input pixels), scores float32 [N], labels int64 [N].
    The image is read (its maximum, times zero, is added to every box and score), so a run needs the real input."""
    return graph_model(
        [helper.make_node("ReduceMax", [input_name], ["peak"], keepdims=0),
         helper.make_node("Mul", ["peak", "zero"], ["nothing"]),
         helper.make_node("Add", ["fixed_boxes", "nothing"], ["boxes"]),
         helper.make_node("Add", ["fixed_scores", "nothing"], ["scores"]),
         helper.make_node("Identity", ["fixed_labels"], ["labels"])],
        [(input_name, TensorProto.FLOAT, input_shape)],
        [("boxes", TensorProto.FLOAT, ["n", len(boxes[0])]), ("scores", TensorProto.FLOAT, ["n"]),
         ("labels", TensorProto.INT64, ["n"])],
        [("fixed_boxes", np.asarray(boxes, np.float32)), ("fixed_scores", np.asarray(scores, np.float32)),
         ("fixed_labels", np.asarray(labels, np.int64)), ("zero", np.float32(0.0))],
    )
