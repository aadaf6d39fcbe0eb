"""A site's own 2-D nodule detector in the thyroid cascade, as tests build it: the detector's manifest, the
reference classifier re-issued to require it, and where a frame's box lies in the detector's input."""

from __future__ import annotations

import json
from pathlib import Path

from devkit.reference_models import reference_model_dir
from tests.utils.onnx_models import manifest_for, write_model_folder

CLASSIFIER = "thyroid-malignancy-reference"
SEGMENTER = "thyroid-nodule-segmentation-reference"
DETECTOR = "thyroid-nodule-detector"
CASCADE = "thyroid-malignancy-with-detector"
THRESHOLD = 0.3


def letterboxed(box: tuple[float, float, float, float], region, size) -> list[float]:
    """A frame-pixel box (x0, y0, x1, y1) in the letterboxed input: the region scaled to fit, centred."""
    rx0, ry0, rx1, ry1 = region
    width, height = rx1 - rx0, ry1 - ry0
    fit = min(size[1] / width, size[0] / height)
    inner_w, inner_h = round(width * fit), round(height * fit)
    pad_x, pad_y = (size[1] - inner_w) // 2, (size[0] - inner_h) // 2
    x0, y0, x1, y1 = box
    return [pad_x + (x0 - rx0) * inner_w / width, pad_y + (y0 - ry0) * inner_h / height,
            pad_x + (x1 - rx0) * inner_w / width, pad_y + (y1 - ry0) * inner_h / height]


def stretched(box: tuple[float, float, float, float], region, size) -> list[float]:
    """A frame-pixel box (x0, y0, x1, y1) in the stretched input: each axis of the region scaled on its own."""
    rx0, ry0, rx1, ry1 = region
    sx, sy = size[1] / (rx1 - rx0), size[0] / (ry1 - ry0)
    x0, y0, x1, y1 = box
    return [(x0 - rx0) * sx, (y0 - ry0) * sy, (x1 - rx0) * sx, (y1 - ry0) * sy]


def detector_manifest(onnx_bytes: bytes, size: tuple[int, int], channels: int = 3, boxes_shape=("n", 4),
                      **preprocessing) -> dict:
    segmenter = json.loads((reference_model_dir(SEGMENTER) / "1" / "manifest.json").read_text())
    return manifest_for(
        DETECTOR, "thyroid-malignancy", onnx_bytes,
        accepts={"formats": ["png", "jpeg", "dicom"], "modalities": ["US", "OT", "SC"], "min_rows": 64,
                 "min_columns": 64},
        inputs=[{"name": "images", "dtype": "float32", "layout": "NCHW", "shape": [1, channels, *size]}],
        outputs=[{"name": "boxes", "dtype": "float32", "layout": "NB", "shape": list(boxes_shape)},
                 {"name": "scores", "dtype": "float32", "layout": "N", "shape": ["n"]},
                 {"name": "labels", "dtype": "int64", "layout": "N", "shape": ["n"]}],
        preprocessing={"color_order": "RGB" if channels == 3 else "GRAY", "crop": "imaging-region",
                       "target_size": list(size),
                       "normalization": {"scale": 1 / 255, "mean": [0.0] * channels, "std": [1.0] * channels},
                       **preprocessing},
        decoding={"kind": "box-detection", "activation": "none", "box_format": "xyxy", "nms_iou": 0.5,
                  "nms_radius_mm": 2.0, "box_outputs": {"boxes": "boxes", "scores": "scores", "labels": "labels"},
                  "segments": {"nodule": segmenter["decoding"]["segments"]["nodule"]}},
        class_names=["nodule", "cyst"],
        operating_points=[{"name": "detection", "threshold": THRESHOLD, "measured_on": "nothing (test)"}],
        default_operating_point="detection",
    )


def cascade_repository(root: Path, detector_bytes: bytes, detector: dict) -> Path:
    """The reference classifier, re-issued to require the detector, and the detector: nothing else is served."""
    classifier_folder = reference_model_dir(CLASSIFIER) / "1"
    classifier = json.loads((classifier_folder / "manifest.json").read_text())
    classifier.update(id=CASCADE, requires=[DETECTOR])
    write_model_folder(root, (classifier_folder / "model.onnx").read_bytes(), classifier)
    write_model_folder(root, detector_bytes, detector)
    return root
