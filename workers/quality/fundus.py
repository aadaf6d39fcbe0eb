"""Quality gate for a colour fundus photograph: is there a retina, is it lit, sharp and contrasted enough,
and is it a fundus photo at all (a chest X-ray or a scanned page is not)?

Measured where the model looks: the retina disc found exactly as the preprocessing finds it
(`workers.imaging.fundus`). Focus is the variance of the Laplacian (scipy.ndimage.laplace) of the green
channel, the channel with the most retinal detail, inside the square inscribed in the disc, resized to a
fixed side so that the measure does not depend on the camera's resolution.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from app.schemas.manifest import FundusQuality
from app.schemas.quality import Quality, QualityReason
from workers.imaging.fundus import FundusPhoto, as_fundus_photo
from workers.quality import verdict


def check_fundus(photo: np.ndarray | FundusPhoto, limits: FundusQuality) -> Quality:
    """`photo`: its pixels, or the FundusPhoto the preprocessing also uses (the disc is then found once)."""
    photo = as_fundus_photo(photo)
    image, disc = photo.image, photo.disc
    if disc is None:
        return verdict([QualityReason(
            code="no-field-of-view",
            detail="No retina is visible: the photo is dark throughout. Check the flash and the pupil "
                   "(dilate if needed), then retake the photo.",
        )], {"field_of_view_found": False})

    measures: dict = {"field_of_view_found": True}
    reasons: list[QualityReason] = []
    mask = disc.mask
    rows, cols = np.nonzero(mask)
    box_area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    measures["field_of_view_fraction"] = float(mask.mean())
    measures["disc_fill"] = float(mask.sum() / box_area)

    # Colour and light at the mask's scale: block means, as the mask itself was found.
    factor = max(1, min(image.width // mask.shape[1], image.height // mask.shape[0]))
    if factor == disc.factor:  # the copy the mask was found on (all but extreme aspect ratios)
        small = disc.block_means[mask]
    else:
        small = np.asarray(image.reduce(factor, box=(0, 0, mask.shape[1] * factor, mask.shape[0] * factor)),
                           dtype=np.float32)[mask]
    red, green = float(small[:, 0].mean()), float(small[:, 1].mean())
    measures["red_to_green"] = red / max(green, 1.0)
    measures["brightness"] = float((small @ np.array([0.299, 0.587, 0.114], np.float32)).mean())

    centre = _inscribed_green(image, disc.square, limits.focus_side)
    if centre is not None:
        measures["focus"] = float(ndimage.laplace(centre).var())
        measures["contrast"] = float(centre.std() / max(centre.mean(), 1.0))

    not_fundus = (measures["red_to_green"] < limits.min_red_to_green
                  or not limits.min_disc_fill <= measures["disc_fill"] <= limits.max_disc_fill)
    if not_fundus:
        reasons.append(QualityReason(
            code="not-a-fundus-photo",
            detail=f"This does not look like a colour fundus photograph (red/green {measures['red_to_green']:.2f}, "
                   f"needs >= {limits.min_red_to_green}; bright-region fill of its bounding box "
                   f"{measures['disc_fill']:.2f}, a retina disc gives {limits.min_disc_fill}-{limits.max_disc_fill}). "
                   "Send a colour photo of the retina, not an X-ray, a scan or a document.",
        ))
    elif measures["field_of_view_fraction"] < limits.min_field_of_view_fraction:
        reasons.append(QualityReason(
            code="field-of-view-too-small",
            detail=f"The retina covers {measures['field_of_view_fraction']:.0%} of the photo (at least "
                   f"{limits.min_field_of_view_fraction:.0%} needed). Centre the eye and retake, or crop less.",
        ))
    if not not_fundus:
        reasons += _light_focus_contrast(measures, limits)
    return verdict(reasons, measures)


def _light_focus_contrast(measures: dict, limits: FundusQuality) -> list[QualityReason]:
    reasons = []
    if measures["brightness"] < limits.min_brightness:
        reasons.append(QualityReason(code="too-dark", detail=(
            f"The retina is too dark (mean brightness {measures['brightness']:.0f} of 255, at least "
            f"{limits.min_brightness:.0f} needed). Increase the flash or dilate the pupil, then retake.")))
    if measures["brightness"] > limits.max_brightness:
        reasons.append(QualityReason(code="overexposed", detail=(
            f"The retina is overexposed (mean brightness {measures['brightness']:.0f} of 255, at most "
            f"{limits.max_brightness:.0f}). Lower the flash, then retake.")))
    if "focus" in measures and measures["focus"] < limits.min_focus:
        reasons.append(QualityReason(code="out-of-focus", detail=(
            f"The photo is out of focus (variance of the Laplacian {measures['focus']:.2f}, at least "
            f"{limits.min_focus} needed). Refocus the camera and retake; check for cataract or a smeared lens.")))
    if "contrast" in measures and measures["contrast"] < limits.min_contrast:
        reasons.append(QualityReason(code="low-contrast", detail=(
            f"The retina has too little contrast (std/mean {measures['contrast']:.3f}, at least "
            f"{limits.min_contrast} needed): haze, glare or media opacity. Retake the photo.")))
    return reasons


def _inscribed_green(image: Image.Image, box: tuple[int, int, int, int] | None, side: int) -> np.ndarray | None:
    """Green channel of the square inscribed in the retina disc (`box`: the square around it), resized to
    side x side, float32."""
    if box is None:
        return None
    x0, y0, x1, y1 = box
    half = (x1 - x0) / (2 * np.sqrt(2))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    # Kept inside the photo: a disc cut at the top or bottom must not bring the black padding's edge in.
    inner = (max(0, round(cx - half)), max(0, round(cy - half)),
             min(image.width, round(cx + half)), min(image.height, round(cy + half)))
    if inner[2] - inner[0] < 8 or inner[3] - inner[1] < 8:
        return None
    green = image.getchannel("G").crop(inner).resize((side, side), Image.Resampling.BILINEAR)
    return np.asarray(green, dtype=np.float32)
