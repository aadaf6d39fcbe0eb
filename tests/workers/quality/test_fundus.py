"""The fundus gate on arrays, with the DR reference model's limits (about 10 ms a photo)."""

from __future__ import annotations

import numpy as np
import pytest

from app.schemas.manifest import FundusQuality, ModelManifest
from devkit.fundus import make_fundus
from devkit.quality import blurred, chest_xray, document_scan
from devkit.reference_models import reference_model_dir
from workers.quality.fundus import check_fundus


@pytest.fixture(scope="module")
def limits() -> FundusQuality:
    path = reference_model_dir("dr-grading-reference") / "1" / "manifest.json"
    return ModelManifest.model_validate_json(path.read_text()).quality.fundus


def codes(quality) -> list[str]:
    return [reason.code for reason in quality.reasons]


@pytest.mark.parametrize("seed", [0, 1, 2, 5, 11])
def test_check_fundus_good_photo_is_gradable(limits, seed: int) -> None:
    quality = check_fundus(make_fundus(seed).rgb, limits)

    assert quality.gradable, quality.reasons
    assert quality.reasons == []
    assert {"field_of_view_fraction", "brightness", "focus", "contrast", "red_to_green"} <= set(quality.measures)


def test_check_fundus_black_photo_has_no_field_of_view(limits) -> None:
    quality = check_fundus(np.zeros((600, 600, 3), np.uint8), limits)

    assert not quality.gradable
    assert codes(quality) == ["no-field-of-view"]
    assert "retake" in quality.reasons[0].detail


def test_check_fundus_blurred_photo_is_out_of_focus(limits) -> None:
    photo = make_fundus(1).rgb

    quality = check_fundus(blurred(photo), limits)

    assert not quality.gradable
    assert codes(quality) == ["out-of-focus"]
    assert quality.measures["focus"] < limits.min_focus < check_fundus(photo, limits).measures["focus"]


def test_check_fundus_underexposed_photo_is_too_dark(limits) -> None:
    dark = (make_fundus(2).rgb * 0.3).astype(np.uint8)

    quality = check_fundus(dark, limits)

    assert not quality.gradable
    assert "too-dark" in codes(quality)


@pytest.mark.parametrize("image", [chest_xray(), np.repeat(chest_xray()[..., None], 3, axis=-1), document_scan()],
                         ids=["chest-xray-grey", "chest-xray-rgb", "document-scan"])
def test_check_fundus_other_pictures_are_not_fundus_photos(limits, image: np.ndarray) -> None:
    quality = check_fundus(image, limits)

    assert not quality.gradable
    assert codes(quality) == ["not-a-fundus-photo"]
