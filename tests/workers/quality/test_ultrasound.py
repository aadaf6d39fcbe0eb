"""The ultrasound gate on arrays, with the thyroid reference model's limits (well under a second)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from app.schemas.manifest import ModelManifest, UltrasoundQuality
from devkit.reference_models import reference_model_dir
from devkit.ultrasound import make_frame
from workers.imaging.ultrasound import find_imaging_region, to_grey
from workers.quality.ultrasound import check_frame, check_nodule


@pytest.fixture(scope="module")
def limits() -> UltrasoundQuality:
    path = reference_model_dir("thyroid-malignancy-reference") / "1" / "manifest.json"
    return ModelManifest.model_validate_json(path.read_text()).quality.ultrasound


def frame_gate(frame: np.ndarray, limits: UltrasoundQuality, spacing=None):
    grey = to_grey(frame)
    return check_frame(grey, find_imaging_region(grey), spacing, limits)


def menu_screen() -> np.ndarray:
    """The scanner's settings screen: text on black, no B-mode image."""
    screen = Image.new("L", (640, 480), 0)
    draw = ImageDraw.Draw(screen)
    for y in range(20, 460, 30):
        draw.text((20, y), "THYROID L  TRANS  12L5  GAIN 54  DR 60  DEPTH 4.0 cm", fill=200)
    return np.asarray(screen)


@pytest.mark.parametrize("seed, ui", [(0, True), (1, False), (2, None), (3, None)])
def test_check_frame_good_frame_is_gradable(limits, seed: int, ui: bool | None) -> None:
    quality = frame_gate(make_frame(seed, ui=ui).frame, limits)

    assert quality.gradable, quality.reasons
    assert quality.measures["lit_fraction"] > limits.min_lit_fraction


@pytest.mark.parametrize("frame", [np.zeros((480, 640), np.uint8), menu_screen(), np.full((480, 640), 128, np.uint8)],
                         ids=["black", "menu-screen", "flat-grey"])
def test_check_frame_without_imaging_region_is_refused(limits, frame: np.ndarray) -> None:
    quality = frame_gate(frame, limits)

    assert not quality.gradable
    assert [r.code for r in quality.reasons] == ["no-imaging-region"]


def test_check_frame_unknown_scale_refused_only_when_required(limits) -> None:
    frame = make_frame(1).frame
    required = limits.model_copy(update={"require_scale": True})

    assert frame_gate(frame, limits).gradable
    assert [r.code for r in frame_gate(frame, required).reasons] == ["scale-unknown"]
    assert frame_gate(frame, required, spacing=(0.1, 0.1)).gradable


def test_check_nodule_touching_the_region_edge_is_outside_the_field(limits) -> None:
    region = (100, 50, 500, 400)
    frame_quality = frame_gate(make_frame(1).frame, limits)
    inside = np.zeros((480, 640), bool)
    inside[150:250, 200:300] = True
    grazing = np.zeros((480, 640), bool)
    grazing[300:400, 200:300] = True
    grazing[399, 200:300] = False
    grazing[399, 245:255] = True  # touches the region's last row over 10 px
    cut = np.zeros((480, 640), bool)
    cut[300:480, 200:300] = True  # continues below the region

    assert check_nodule(inside, region, frame_quality, limits).gradable
    assert check_nodule(grazing, region, frame_quality, limits).gradable
    refused = check_nodule(cut, region, frame_quality, limits)
    assert [r.code for r in refused.reasons] == ["nodule-outside-field"]
    assert refused.measures["nodule_edge_fraction"] > limits.max_nodule_edge_fraction
