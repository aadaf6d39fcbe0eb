"""Inputs a quality gate must refuse: photos that are not fundus photos, degraded fundus photos."""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from devkit.covid import covid_case

WATER_MU_PER_MM = 0.02  # linear attenuation of water near 70 keV


@functools.lru_cache(maxsize=2)
def chest_xray(seed: int = 3, side: int = 512) -> np.ndarray:
    """A frontal chest radiograph (uint8 grey): a synthetic chest CT projected front to back, attenuation
    white, as a viewer shows it."""
    case = covid_case(seed, matrix=96)
    mu = np.clip((case.hu + 1000.0) / 1000.0, 0.0, None) * WATER_MU_PER_MM
    line = mu.sum(axis=1) * case.grid.spacing[1]  # (slices, columns): the path through the patient, front to back
    image = 1.0 - np.exp(-line)
    grey = (255 * (image - image.min()) / np.ptp(image)).astype(np.uint8)[::-1]  # head up
    return np.asarray(Image.fromarray(grey).resize((side, side), Image.Resampling.BILINEAR))


def document_scan(width: int = 600, height: int = 800) -> np.ndarray:
    """A scanned page of text, RGB."""
    page = Image.new("RGB", (width, height), (245, 245, 240))
    draw = ImageDraw.Draw(page)
    for y in range(60, height - 40, 24):
        draw.text((50, y), "Referral letter: please grade the enclosed retinal photographs 0123", fill=(20, 20, 20))
    return np.asarray(page)


def blurred(rgb: np.ndarray, model_side: int = 224, sigma_at_model: float = 2.5) -> np.ndarray:
    """Defocus: a Gaussian blur of `sigma_at_model` pixels once the photo is shrunk to the model's input."""
    radius = rgb.shape[1] / model_side * sigma_at_model
    return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(radius)))
