"""Fit and export chest-xray-findings-reference: seconds on a CPU, synthetic radiographs only.

    PYTHONPATH=examples/chest-xray-findings/src .venv/bin/python \
        examples/chest-xray-findings/models/chest-xray-findings-reference/build_model.py

A linear model on 8x8 area means of the 64x64 input: one logistic regression per finding (scikit-learn),
written as an ONNX graph (AveragePool -> Flatten -> Gemm) with the onnx helper API. The graph is checked
against the fitted model before anything is written. Splits: train (seed 1), validation (seed 2: chooses each
finding's threshold, Youden's J), test (seed 3: read once, after the thresholds are fixed, for the card).
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from medimg_chest_xray.pipeline import to_model_tensor
from medimg_chest_xray.synthetic import FINDINGS, dataset
from onnx import TensorProto, helper, numpy_helper
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve

from app.model_repository import file_sha256
from app.schemas.manifest import ModelManifest, Normalization, Preprocessing

HERE = Path(__file__).resolve().parent
VERSION_DIR = HERE / "1"
INPUT_SIZE = 64
POOL = 8
PREPROCESSING = Preprocessing(color_order="GRAY", target_size=(INPUT_SIZE, INPUT_SIZE),
                              normalization=Normalization(scale=1 / 255, mean=[0.5], std=[0.25]))


def tensors(images: np.ndarray) -> np.ndarray:
    return np.stack([to_model_tensor(image, PREPROCESSING) for image in images])


def pooled(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    return x.reshape(n, INPUT_SIZE // POOL, POOL, INPUT_SIZE // POOL, POOL).mean(axis=(2, 4)).reshape(n, -1)


def export(weights: np.ndarray, bias: np.ndarray) -> bytes:
    graph = helper.make_graph(
        [helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[POOL, POOL], strides=[POOL, POOL]),
         helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
         helper.make_node("Gemm", ["features", "weights", "bias"], ["logits"])],
        "chest_xray_findings",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, INPUT_SIZE, INPUT_SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(FINDINGS)])],
        [numpy_helper.from_array(weights.astype(np.float32), "weights"),
         numpy_helper.from_array(bias.astype(np.float32), "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="medimg-example")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def main() -> None:
    train_x, train_y = dataset(600, seed=1)
    val_x, val_y = dataset(200, seed=2)
    features = pooled(tensors(train_x))
    weights, bias = [], []
    for k in range(len(FINDINGS)):
        fitted = LogisticRegression(C=1.0, max_iter=2000).fit(features, train_y[:, k])
        weights.append(fitted.coef_[0])
        bias.append(fitted.intercept_[0])
    data = export(np.stack(weights, axis=1), np.asarray(bias))
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])

    def probabilities(images: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-session.run(["logits"], {"image": tensors(images)})[0]))

    expected = 1 / (1 + np.exp(-(features @ np.stack(weights, axis=1) + np.asarray(bias))))
    assert np.allclose(probabilities(train_x), expected, atol=1e-4), "the ONNX graph disagrees with the fit"

    val_p = probabilities(val_x)
    thresholds, validation = {}, {}
    for k, name in enumerate(FINDINGS):
        fpr, tpr, cuts = roc_curve(val_y[:, k], val_p[:, k])
        best = int(np.argmax(tpr - fpr))
        thresholds[name] = round(float(min(cuts[best], 1.0)), 3)
        validation[name] = (float(roc_auc_score(val_y[:, k], val_p[:, k])), float(tpr[best]), float(1 - fpr[best]))
    test_x, test_y = dataset(200, seed=3)  # read once, thresholds fixed
    test_p = probabilities(test_x)
    metrics = {}
    for k, name in enumerate(FINDINGS):
        positive = test_p[:, k] >= thresholds[name]
        metrics[f"{name}_auc"] = round(float(roc_auc_score(test_y[:, k], test_p[:, k])), 4)
        metrics[f"{name}_sensitivity"] = round(float(positive[test_y[:, k] == 1].mean()), 4)
        metrics[f"{name}_specificity"] = round(float((~positive)[test_y[:, k] == 0].mean()), 4)

    VERSION_DIR.mkdir(exist_ok=True)
    (VERSION_DIR / "model.onnx").write_bytes(data)
    manifest = _manifest(file_sha256(VERSION_DIR / "model.onnx"), thresholds, metrics)
    (VERSION_DIR / "manifest.json").write_text(manifest.model_dump_json(indent=2, exclude_none=True) + "\n")
    print(json.dumps({"thresholds": thresholds, "validation": validation, "test": metrics}, indent=2))


def _manifest(sha256: str, thresholds: dict[str, float], metrics: dict[str, float]) -> ModelManifest:
    return ModelManifest.model_validate({
        "id": "chest-xray-findings-reference", "version": 1, "task": "chest-xray-findings",
        "title": "Chest X-ray findings (synthetic reference)",
        "intended_use": "Exercising the chest-xray-findings plug-in end to end on synthetic radiographs. "
                        "Not for clinical use.",
        "research_use_only": True, "sha256": sha256,
        "accepts": {"formats": ["dicom", "png", "jpeg"], "modalities": ["CR", "DX"], "samples_per_pixel": [1, 3],
                    "min_rows": 64, "min_columns": 64, "max_frames": 1},
        "inputs": [{"name": "image", "dtype": "float32", "layout": "NCHW",
                    "shape": ["batch", 1, INPUT_SIZE, INPUT_SIZE]}],
        "outputs": [{"name": "logits", "dtype": "float32", "layout": "NC", "shape": ["batch", len(FINDINGS)]}],
        "preprocessing": PREPROCESSING.model_dump(),
        "decoding": {"kind": "multilabel-sigmoid", "activation": "sigmoid", "class_thresholds": thresholds},
        "class_names": list(FINDINGS),
        "operating_points": [{"name": "youden", "threshold": 0.5,
                              "measured_on": "per finding: decoding.class_thresholds, chosen on the validation "
                                             "split (seed 2); 0.5 only for classes without one"}],
        "default_operating_point": "youden",
        "metrics": metrics,
        "provenance": {"created": datetime.date.today().isoformat(), "framework": "scikit-learn + onnx helper",
                       "training_data": "600 synthetic radiographs (medimg_chest_xray.synthetic, seed 1)",
                       "training_script": "examples/chest-xray-findings/models/chest-xray-findings-reference/"
                                          "build_model.py"},
    })


if __name__ == "__main__":
    main()
