"""B-mode ultrasound frames: imaging region, physical pixel size, and the tensors of the thyroid cascade.

Shared by training, evaluation and the serving pipeline, so a model sees the same pixels in production
as in training; every size and normalisation number comes from the model's `Preprocessing` entry.

Coordinates are (x, y) = (column, row) of the input frame; boxes are `(x0, y0, x1, y1)` with exclusive
ends. Pixel spacing is `(row_mm, column_mm)`, the order of DICOM PixelSpacing.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull

from app.schemas.manifest import Preprocessing

EIGHT_CONNECTED = np.ones((3, 3), bool)
FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)

Box = tuple[int, int, int, int]
SpacingSource = Literal["ultrasound-regions", "pixel-spacing", "options", "none"]

# DICOM PS3.3 C.8.5.5: RegionSpatialFormat 1 is a 2D tissue image; physical units code 3 is centimetres.
_SPATIAL_FORMAT_2D = 1
_UNITS_CM = 3

# Region detection on screenshots: a column or row belongs to the image when most of its pixels are lit
# (brighter than the UI background after smoothing). Text, tick marks and greyscale bars are sparse or
# narrow and separated from the image by background, so the longest run of lit lines is the image.
_SMOOTH_PX = 5
_LIT_MARGIN = 10.0
_LINE_FRACTION = 0.5
_MIN_REGION_FRACTION = 0.2


@dataclass(frozen=True)
class UltrasoundRegion:
    """One entry of SequenceOfUltrasoundRegions that holds a 2D tissue image."""

    box: Box
    spacing_mm: tuple[float, float] | None


@dataclass(frozen=True)
class FrameGeometry:
    """What the file says about where the image is and how large its pixels are."""

    regions: tuple[UltrasoundRegion, ...] = ()
    pixel_spacing_mm: tuple[float, float] | None = None  # from PixelSpacing


@dataclass(frozen=True)
class Spacing:
    mm: tuple[float, float] | None
    source: SpacingSource


def read_geometry(path: Path, input_format: str) -> FrameGeometry:
    """Regions and PixelSpacing from a DICOM header; PNG and JPEG carry neither."""
    if input_format != "dicom":
        return FrameGeometry()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    regions = []
    for item in dataset.get("SequenceOfUltrasoundRegions", None) or []:
        if int(item.get("RegionSpatialFormat", 0) or 0) != _SPATIAL_FORMAT_2D:
            continue
        try:
            box = (
                int(item.RegionLocationMinX0), int(item.RegionLocationMinY0),
                int(item.RegionLocationMaxX1) + 1, int(item.RegionLocationMaxY1) + 1,
            )
        except (AttributeError, TypeError, ValueError):
            continue
        spacing = None
        units = (int(item.get("PhysicalUnitsXDirection", 0) or 0), int(item.get("PhysicalUnitsYDirection", 0) or 0))
        delta_x, delta_y = item.get("PhysicalDeltaX"), item.get("PhysicalDeltaY")
        if units == (_UNITS_CM, _UNITS_CM) and delta_x and delta_y and float(delta_x) > 0 and float(delta_y) > 0:
            spacing = (abs(float(delta_y)) * 10.0, abs(float(delta_x)) * 10.0)
        regions.append(UltrasoundRegion(box=box, spacing_mm=spacing))
    pixel_spacing = None
    raw = dataset.get("PixelSpacing")
    if raw is not None and len(raw) == 2 and float(raw[0]) > 0 and float(raw[1]) > 0:
        pixel_spacing = (float(raw[0]), float(raw[1]))
    return FrameGeometry(regions=tuple(regions), pixel_spacing_mm=pixel_spacing)


def tissue_region(geometry: FrameGeometry, frame_shape: tuple[int, ...]) -> UltrasoundRegion | None:
    """The largest 2D tissue region that lies inside the frame, or None."""
    rows, cols = frame_shape[:2]
    inside = [
        r for r in geometry.regions
        if 0 <= r.box[0] < r.box[2] <= cols and 0 <= r.box[1] < r.box[3] <= rows
    ]
    if not inside:
        return None
    return max(inside, key=lambda r: (r.box[2] - r.box[0]) * (r.box[3] - r.box[1]))


def resolve_spacing(region: UltrasoundRegion | None, geometry: FrameGeometry, option_mm: float | None) -> Spacing:
    """The caller's `pixel_spacing_mm` replaces what the file says; then the US region, then PixelSpacing."""
    if option_mm is not None:
        return Spacing((option_mm, option_mm), "options")
    if region is not None and region.spacing_mm is not None:
        return Spacing(region.spacing_mm, "ultrasound-regions")
    if geometry.pixel_spacing_mm is not None:
        return Spacing(geometry.pixel_spacing_mm, "pixel-spacing")
    return Spacing(None, "none")


def to_grey(frame: np.ndarray) -> np.ndarray:
    """uint8 luminance (ITU-R BT.601) of an RGB frame; grey frames pass through."""
    if frame.ndim == 2:
        return frame
    rgb = frame[..., :3].astype(np.float32)
    return np.round(rgb @ np.array([0.299, 0.587, 0.114], np.float32)).clip(0, 255).astype(np.uint8)


def find_imaging_region(grey: np.ndarray) -> Box:
    """The rectangle of B-mode image in a screenshot, without the UI border, text and scales around it.

    Returns the whole frame when no clear border is found.
    """
    rows, cols = grey.shape
    smooth = _box_blur(grey.astype(np.float32), _SMOOTH_PX)
    ring = np.concatenate([grey[:2].ravel(), grey[-2:].ravel(), grey[:, :2].ravel(), grey[:, -2:].ravel()])
    background = min(float(np.percentile(ring, 10)), 30.0)
    lit = smooth > background + _LIT_MARGIN
    x0, x1 = 0, cols
    y0, y1 = 0, rows
    for _ in range(2):  # columns over the current rows, then rows over those columns, once more
        x0, x1 = _longest_run(lit[y0:y1].mean(axis=0) >= _LINE_FRACTION, (x0, x1))
        y0, y1 = _longest_run(lit[:, x0:x1].mean(axis=1) >= _LINE_FRACTION, (y0, y1))
    if (x1 - x0) < _MIN_REGION_FRACTION * cols or (y1 - y0) < _MIN_REGION_FRACTION * rows:
        return (0, 0, cols, rows)
    return (x0, y0, x1, y1)


def _box_blur(image: np.ndarray, size: int) -> np.ndarray:
    pad = size // 2
    padded = np.pad(image, pad, mode="edge")
    cumulative = padded.cumsum(axis=0).cumsum(axis=1)
    cumulative = np.pad(cumulative, ((1, 0), (1, 0)))
    h, w = image.shape
    total = (
        cumulative[size:size + h, size:size + w] - cumulative[:h, size:size + w]
        - cumulative[size:size + h, :w] + cumulative[:h, :w]
    )
    return total / (size * size)


def _longest_run(flags: np.ndarray, fallback: tuple[int, int]) -> tuple[int, int]:
    best, start, best_span = None, None, 0
    for index, flag in enumerate(np.append(flags, False)):
        if flag and start is None:
            start = index
        elif not flag and start is not None:
            if index - start > best_span:
                best, best_span = (start, index), index - start
            start = None
    return best if best is not None else fallback


# --- tensors ----------------------------------------------------------------------------------------


def _normalise(pixels: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """`pixels` is (C, H, W) in 0..255; channel c uses mean[c] and std[c]."""
    norm = preprocessing.normalization
    if norm is None:
        return pixels.astype(np.float32)
    mean = np.asarray(norm.mean, np.float32)[:, None, None]
    std = np.asarray(norm.std, np.float32)[:, None, None]
    return np.ascontiguousarray(((pixels.astype(np.float32) * norm.scale) - mean) / std, dtype=np.float32)


@dataclass(frozen=True)
class InputPlacement:
    """Where a crop of the frame lies in the model's input, to map the model's pixel coordinates back.

    Coordinates are of pixel edges (pixel i spans [i, i + 1)), so a model-input x is the frame's
    `origin_x + (x - pad_x) * scale_x`, and likewise for y.
    """

    origin: tuple[int, int]  # (x, y): the crop's top-left corner in the frame
    pad: tuple[int, int]  # (x, y): the resized crop's top-left corner in the model input (letterbox)
    scale: tuple[float, float]  # (x, y): frame pixels per model-input pixel
    content: Box  # the resized crop in the model input; outside it is padding

    def to_frame(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (self.origin[0] + (np.asarray(x, np.float64) - self.pad[0]) * self.scale[0],
                self.origin[1] + (np.asarray(y, np.float64) - self.pad[1]) * self.scale[1])


def region_input(frame: np.ndarray, region: Box, preprocessing: Preprocessing) -> tuple[np.ndarray, InputPlacement]:
    """The imaging region resized to the model's size, stretched or letterboxed as `preprocessing.resize` says,
    as a (C, H, W) float32 tensor: one grey channel for GRAY, else three in `color_order` (a grey frame's
    luminance repeated). Returns it with the placement that maps the model's pixels back onto the frame."""
    x0, y0, x1, y1 = region
    height, width = preprocessing.target_size
    if preprocessing.color_order == "GRAY":
        crop = to_grey(frame)[y0:y1, x0:x1]
    else:
        rgb = frame[..., :3] if frame.ndim == 3 else np.repeat(frame[..., None], 3, axis=-1)
        crop = rgb[y0:y1, x0:x1, ::-1] if preprocessing.color_order == "BGR" else rgb[y0:y1, x0:x1]
    crop_width, crop_height = x1 - x0, y1 - y0
    if preprocessing.resize == "letterbox":
        fit = min(width / crop_width, height / crop_height)
        inner = (max(1, min(width, round(crop_width * fit))), max(1, min(height, round(crop_height * fit))))
        pad = ((width - inner[0]) // 2, (height - inner[1]) // 2)
    else:
        inner, pad = (width, height), (0, 0)
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize(inner, Image.BILINEAR), np.float32)
    canvas = np.full((height, width) + resized.shape[2:], preprocessing.letterbox_fill, np.float32)
    canvas[pad[1]:pad[1] + inner[1], pad[0]:pad[0] + inner[0]] = resized
    channels = canvas[None] if canvas.ndim == 2 else np.moveaxis(canvas, -1, 0)
    placement = InputPlacement(origin=(x0, y0), pad=pad, scale=(crop_width / inner[0], crop_height / inner[1]),
                               content=(pad[0], pad[1], pad[0] + inner[0], pad[1] + inner[1]))
    return _normalise(channels, preprocessing), placement


def segmentation_input(grey: np.ndarray, region: Box, preprocessing: Preprocessing) -> np.ndarray:
    """The imaging region resized to the model's size (aspect not kept), as a (1, H, W) float32 tensor."""
    return region_input(grey, region, preprocessing)[0]


def mask_from_probabilities(probabilities: np.ndarray, region: Box, frame_shape: tuple[int, ...],
                            threshold: float = 0.5) -> np.ndarray:
    """Resize a (H, W) probability map back onto the region, threshold it, keep the most confident blob.

    Returns a bool mask of the frame's rows and columns; all False when nothing clears the threshold.
    """
    x0, y0, x1, y1 = region
    resized = np.asarray(
        Image.fromarray(probabilities.astype(np.float32)).resize((x1 - x0, y1 - y0), Image.BILINEAR)
    )
    mask = np.zeros(frame_shape[:2], bool)
    above = resized >= threshold
    if above.any():
        seed = np.unravel_index(np.argmax(np.where(above, resized, -1.0)), resized.shape)
        mask[y0:y1, x0:x1] = fill_holes(connected_component(above, seed))
    return mask


def connected_component(mask: np.ndarray, seed: tuple[int, int]) -> np.ndarray:
    """The 8-connected component of `mask` that holds `seed`."""
    labels, _ = ndimage.label(mask, structure=EIGHT_CONNECTED)
    return labels == labels[seed]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background enclosed by the mask (background not 4-connected to the frame's border)."""
    return ndimage.binary_fill_holes(mask)


def bounding_box(mask: np.ndarray) -> Box:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def classifier_crop_box(mask: np.ndarray, context: float = 1.6) -> Box:
    """A square around the nodule with context on every side; it may reach outside the frame."""
    x0, y0, x1, y1 = bounding_box(mask)
    side = int(round(max(x1 - x0, y1 - y0) * context)) + 8
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    return left, top, left + side, top + side


def classifier_input(grey: np.ndarray, mask: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """Image and mask as two channels of a square crop around the nodule (aspect kept): (2, S, S)."""
    left, top, right, bottom = classifier_crop_box(mask)
    side = right - left
    image = np.zeros((side, side), np.uint8)
    outline = np.zeros((side, side), np.uint8)
    rows, cols = grey.shape
    sy0, sy1, sx0, sx1 = max(top, 0), min(bottom, rows), max(left, 0), min(right, cols)
    image[sy0 - top:sy1 - top, sx0 - left:sx1 - left] = grey[sy0:sy1, sx0:sx1]
    outline[sy0 - top:sy1 - top, sx0 - left:sx1 - left] = mask[sy0:sy1, sx0:sx1].astype(np.uint8) * 255
    height, width = preprocessing.target_size
    image_small = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR), np.float32)
    mask_small = np.asarray(Image.fromarray(outline).resize((width, height), Image.BILINEAR), np.float32)
    mask_small = np.where(mask_small >= 128, 255.0, 0.0).astype(np.float32)
    return _normalise(np.stack([image_small, mask_small]), preprocessing)


# --- measurements -----------------------------------------------------------------------------------


def ellipse_in_box(box: Box, frame_shape: tuple[int, ...]) -> np.ndarray:
    """The ellipse inscribed in a box: the mask a caller's box ROI stands for (its bounding box is the box)."""
    x0, y0, x1, y1 = box
    rows, cols = frame_shape[:2]
    yy, xx = np.mgrid[0:rows, 0:cols]
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    ax, ay = max((x1 - x0) / 2, 0.5), max((y1 - y0) / 2, 0.5)
    # Pixel centres are at +0.5; shrink the axes by half a pixel so the outermost row and column centres
    # qualify, with slack for a centre that falls between two pixels (odd sizes).
    rx, ry = max(ax - 0.5, 0.5), max(ay - 0.5, 0.5)
    slack = (0.5 / rx) ** 2 + (0.5 / ry) ** 2
    inside = (((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2) <= 1.0 + slack
    inside[:, :x0] = inside[:, x1:] = False
    inside[:y0, :] = inside[y1:, :] = False
    return inside


def max_diameter_px(mask: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> float:
    """Largest distance across the mask (maximum Feret diameter), in units of `spacing`.

    Measured between outer pixel corners of the outline, so a one-pixel-wide line of n pixels is n long.
    """
    ys, xs = np.nonzero(mask_outline(mask))
    if ys.size == 0:
        return 0.0
    corners_y = np.concatenate([ys, ys, ys + 1, ys + 1]).astype(np.float64) * spacing[0]
    corners_x = np.concatenate([xs, xs + 1, xs, xs + 1]).astype(np.float64) * spacing[1]
    points = np.unique(np.stack([corners_y, corners_x], axis=1), axis=0)
    points = points[ConvexHull(points).vertices]  # the farthest pair lies on the hull: fewer pairs to measure
    diff = points[:, None, :] - points[None, :, :]
    return float(np.sqrt((diff**2).sum(-1)).max())


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask (or on the frame's edge): the one-pixel outline."""
    return mask & ~ndimage.binary_erosion(mask, structure=FOUR_CONNECTED, border_value=0)


def is_taller_than_wide(mask: np.ndarray, spacing: tuple[float, float] | None) -> bool:
    """Anteroposterior extent (rows) greater than transverse extent (columns), in physical units when known."""
    x0, y0, x1, y1 = bounding_box(mask)
    row_mm, col_mm = spacing or (1.0, 1.0)
    return (y1 - y0) * row_mm > (x1 - x0) * col_mm
