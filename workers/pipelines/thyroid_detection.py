"""The thyroid cascade's first stage as a 2-D box-detection model (an exported YOLO/torchvision-style detector).

The imaging region is cropped and resized (stretched or letterboxed, as the detector's manifest says) to the
detector's input; its boxes, in pixel index ranges of that input, are clipped to the part that holds the frame
(not the letterbox padding), mapped back onto the frame's pixels, measured in millimetres with the frame's pixel
spacing (the one the segmentation path's sizes use), kept at or above the detector's operating point and merged
by NMS in millimetres (the manifest's `nms_iou` and `nms_radius_mm`). The frame is one model input: nothing is
tiled, so there is nothing to merge across.
"""

from __future__ import annotations

import numpy as np

from app.errors import ModelError
from app.schemas.results import ThyroidDetection
from workers.decoding import decode_boxes, suppress_overlaps
from workers.imaging.ultrasound import Box, InputPlacement, region_input
from workers.onnx import LoadedModel

TWO_D_FORMATS = ("xyxy", "yxyx")


def detect_nodules(frame: np.ndarray, region: Box, spacing_mm: tuple[float, float] | None,
                   detector: LoadedModel) -> list[ThyroidDetection]:
    """The detector's boxes on `frame` (as decoded, grey or RGB) as findings in frame pixels and mm, best first."""
    manifest = detector.manifest
    decoding = manifest.decoding
    if decoding.box_format not in TWO_D_FORMATS:
        raise ModelError(f"{manifest.id}: a thyroid nodule detector gives 2-D boxes (decoding.box_format "
                         f"{' or '.join(TWO_D_FORMATS)}); its manifest says {decoding.box_format}")
    if manifest.preprocessing.target_size is None:
        raise ModelError(f"{manifest.id}: preprocessing.target_size is needed to resize the imaging region to the "
                         "detector's input")
    tensor, placement = region_input(frame, region, manifest.preprocessing)
    boxes = decode_boxes(detector.run({manifest.inputs[0].name: tensor[np.newaxis]}), manifest)
    x0, y0, x1, y1 = (np.round(v, 2) for v in frame_boxes(boxes.low, boxes.high, placement))  # as reported
    threshold = manifest.operating_point().threshold
    candidates = np.flatnonzero((boxes.scores >= threshold) & (x1 > x0) & (y1 > y0))
    row_mm, column_mm = spacing_mm or (1.0, 1.0)
    low_mm = np.stack([x0 * column_mm, y0 * row_mm], axis=1)[candidates]
    high_mm = np.stack([x1 * column_mm, y1 * row_mm], axis=1)[candidates]
    # Without a spacing, IoU (the same in any units) still applies; a radius in mm cannot.
    kept = suppress_overlaps(low_mm, high_mm, boxes.scores[candidates], decoding.nms_iou,
                             decoding.nms_radius_mm if spacing_mm is not None else None)
    findings = []
    for index in candidates[kept]:
        label = int(boxes.labels[index])
        if not 0 <= label < len(manifest.class_names):
            raise ModelError(f"{manifest.id}: a box has label {label}; class_names has {len(manifest.class_names)}")
        box_px = (float(x0[index]), float(y0[index]), float(x1[index]), float(y1[index]))
        findings.append(detection_finding(len(findings) + 1, manifest.class_names[label], float(boxes.scores[index]),
                                          box_px, spacing_mm))
    return findings


def frame_boxes(low: np.ndarray, high: np.ndarray,
                placement: InputPlacement) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(N, 2) (row, column) ranges in the model's input → x0, y0, x1, y1 in frame pixels, each (N,); clipped first
    to the resized region, so no box reaches into the letterbox padding or outside the region."""
    cx0, cy0, cx1, cy1 = placement.content
    x0, y0 = placement.to_frame(np.clip(low[:, 1], cx0, cx1), np.clip(low[:, 0], cy0, cy1))
    x1, y1 = placement.to_frame(np.clip(high[:, 1], cx0, cx1), np.clip(high[:, 0], cy0, cy1))
    return x0, y0, x1, y1


def detection_finding(finding_id: int, label: str, score: float, box_px: tuple[float, float, float, float],
                      spacing_mm: tuple[float, float] | None) -> ThyroidDetection:
    x0, y0, x1, y1 = box_px
    centre = ((x0 + x1) / 2, (y0 + y1) / 2)
    measured = {}
    if spacing_mm is not None:
        row_mm, column_mm = spacing_mm
        measured = {
            "bbox_mm": _rounded((x0 * column_mm, y0 * row_mm, x1 * column_mm, y1 * row_mm)),
            "center_mm": _rounded((centre[0] * column_mm, centre[1] * row_mm)),
            "width_mm": round((x1 - x0) * column_mm, 2),
            "height_mm": round((y1 - y0) * row_mm, 2),
        }
    return ThyroidDetection(id=finding_id, label=label, score=round(score, 4), bbox_px=box_px,
                            center_px=_rounded(centre), **measured)


def nodule_box(detection: ThyroidDetection, frame_shape: tuple[int, ...]) -> Box:
    """The whole pixels a detection's box touches, inside the frame: the box its nodule's ellipse fills."""
    rows, cols = frame_shape[:2]
    x0, y0, x1, y1 = detection.bbox_px
    left, top = min(int(np.floor(x0)), cols - 1), min(int(np.floor(y0)), rows - 1)
    return left, top, max(min(int(np.ceil(x1)), cols), left + 1), max(min(int(np.ceil(y1)), rows), top + 1)


def _rounded(values: tuple[float, ...]) -> tuple:
    return tuple(round(float(v), 2) for v in values)
