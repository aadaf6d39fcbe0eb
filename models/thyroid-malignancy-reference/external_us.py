"""External validation ultrasound: thyroid frames from an independently designed generator.

`synthetic_us.py` trains and tests both thyroid models. This generator is written apart from it, to show
what the models do on frames they were not tuned to; it shares only the containers (`UltrasoundItem`,
`NoduleFeatures`) and the ACR TI-RADS lexicon and point-to-level table, which are the task's definitions:

* **anatomy**: tissue layers with wavy boundaries (skin, fat, one or two strap muscles with fibre striation),
  the lobe as a rotated ellipse with a thin capsule, the carotid as an anechoic disc with a
  bright wall and posterior enhancement, the nodule's outline either an ellipse (smooth) or a level set of a
  smoothed random field inside it (lobulated / irregular), with a thin hypoechoic halo sometimes;
* **intensity**: mean echo levels of its own, multiplicative speckle from a gamma distribution (Nakagami-like,
  shape 1–3) smoothed more laterally than axially, a focal-zone brightness band, depth attenuation only
  partly undone, a power-law (gamma) display map rather than a log map;
* **features**: cystic parts as anechoic pools inside mixed nodules, punctate foci as bright specks,
  macrocalcification with an acoustic shadow, rim calcification, comet tails as short vertical streaks;
* **label**: malignancy drawn from its own risk link of the points (`external_risk`), flatter than the
  training generator's;
* **frame**: the image on a black canvas half the time, with a depth ruler; no text.

Item `i` is a pure function of `[EXTERNAL_SEED, i]`; the seed is disjoint from every split seed, train.py's
and the tests' (see synthetic_us.SPLIT_SEEDS).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from workers.evaluation.model_folders import model_folder_module
from workers.imaging.ultrasound import max_diameter_px

su = model_folder_module("thyroid-malignancy-reference", "synthetic_us")  # the training generator beside this file

EXTERNAL_SEED = 660_006


def external_risk(points: int) -> float:
    """The external world's malignancy risk given the points: a logistic link, 50 % at 7 points, flatter."""
    return 1.0 / (1.0 + math.exp(-0.9 * (points - 7.0)))


def _features(rng: np.random.Generator) -> su.NoduleFeatures:
    composition = str(rng.choice(["cystic", "spongiform", "mixed", "solid"], p=[0.08, 0.07, 0.3, 0.55]))
    if composition == "cystic":
        echogenicity = "anechoic"
    else:
        echogenicity = str(rng.choice(["hyperechoic", "isoechoic", "hypoechoic", "very-hypoechoic"],
                                      p=[0.15, 0.3, 0.4, 0.15]))
    margin = str(rng.choice(["smooth", "ill-defined", "lobulated", "irregular", "extrathyroidal"],
                            p=[0.4, 0.15, 0.2, 0.17, 0.08]))
    foci = str(rng.choice(["none", "comet-tail", "macrocalcification", "peripheral", "punctate"],
                          p=[0.45, 0.1, 0.15, 0.1, 0.2]))
    return su.NoduleFeatures(composition, echogenicity, bool(rng.random() < 0.25), margin, foci)


_LEVEL = {"anechoic": 0.05, "hyperechoic": 1.45, "isoechoic": 0.95, "hypoechoic": 0.55, "very-hypoechoic": 0.3}


def _field(rng, shape, sigma):
    layer = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return layer / max(float(layer.std()), 1e-9)


def external_item(index: int) -> su.UltrasoundItem:
    rng = np.random.default_rng([EXTERNAL_SEED, index])
    features = _features(rng)
    rows, cols = int(rng.integers(300, 421)), int(rng.integers(380, 521))
    spacing = float(rng.uniform(0.07, 0.14))
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)

    # Layers from the skin down, boundaries undulating across the image.
    def boundary(depth_mm, wobble_mm):
        phase, period = rng.uniform(0, 2 * np.pi), rng.uniform(15, 40) / spacing
        return (depth_mm + wobble_mm * np.sin(2 * np.pi * xx / period + phase)) / spacing

    echo = np.full((rows, cols), 0.9)
    skin, fat = boundary(rng.uniform(1.2, 2.0), 0.2), boundary(rng.uniform(3.5, 6.0), 0.6)
    muscle = boundary(rng.uniform(8.0, 11.0), 0.8)
    echo[yy < muscle] = 0.45 * (1 + 0.25 * np.sin(yy[yy < muscle] * spacing * rng.uniform(1.5, 3.0)))  # striation
    echo[yy < fat] = rng.uniform(0.55, 0.75)
    echo[yy < skin] = rng.uniform(1.3, 1.7)

    # The lobe: a rotated ellipse below the muscle, filling much of the width.
    lobe_cy = float(muscle.mean()) + rng.uniform(0.35, 0.5) * (rows - muscle.mean())
    lobe_ry, lobe_rx = rng.uniform(0.3, 0.4) * rows, rng.uniform(0.35, 0.45) * cols
    lobe_cx, lobe_angle = cols * rng.uniform(0.45, 0.6), rng.uniform(-0.2, 0.2)
    lobe = _ellipse(xx, yy, lobe_cx, lobe_cy, lobe_rx, lobe_ry, lobe_angle)
    lobe &= yy > muscle + 4
    parenchyma = rng.uniform(0.9, 1.1)
    echo[lobe] = parenchyma
    capsule = lobe & ~ndimage.binary_erosion(lobe, iterations=3)
    echo[capsule] = 1.6

    # Carotid beside the lobe, laterally: anechoic with a bright wall, brighter tissue behind it.
    side = rng.choice([-1, 1])
    c_r = rng.uniform(2.5, 3.5) / spacing
    c_cx = lobe_cx + side * (lobe_rx + c_r * 0.6)
    c_cy = lobe_cy + rng.uniform(-0.2, 0.2) * lobe_ry
    dist = np.hypot(xx - c_cx, yy - c_cy)
    echo[(dist < c_r + 3) & (dist >= c_r)] = 1.8
    echo[dist < c_r] = 0.03
    echo[(np.abs(xx - c_cx) < c_r) & (yy > c_cy + c_r)] *= 1.3

    # The nodule inside the lobe.
    size_mm = rng.uniform(5.0, 28.0)
    semi_w = size_mm / 2 / spacing
    semi_h = semi_w * (rng.uniform(1.1, 1.5) if features.taller_than_wide else rng.uniform(0.55, 0.9))
    limit = 0.8 * min(lobe_ry, lobe_rx)
    scale = min(1.0, limit / max(semi_w, semi_h))
    semi_w, semi_h = semi_w * scale, semi_h * scale
    n_cx = lobe_cx + rng.uniform(-0.25, 0.25) * lobe_rx
    n_cy = lobe_cy + rng.uniform(-0.15, 0.15) * lobe_ry
    rel = np.hypot((xx - n_cx) / semi_w, (yy - n_cy) / semi_h)
    if features.margin in ("lobulated", "irregular", "extrathyroidal"):
        roughness = {"lobulated": (0.18, 10.0), "irregular": (0.28, 3.5), "extrathyroidal": (0.3, 4.0)}
        amplitude, sigma = roughness[features.margin]
        rel = rel + amplitude * _field(rng, (rows, cols), sigma * max(semi_w, semi_h) / 25)
    nodule = rel < 1.0
    nodule = ndimage.binary_opening(nodule, iterations=2)
    labels, count = ndimage.label(nodule)
    if count == 0:
        return external_item(index + 100_000)  # degenerate outline: a fresh draw far from the set's indices
    nodule = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    nodule = ndimage.binary_fill_holes(nodule)
    if features.margin == "smooth" and rng.random() < 0.4:
        halo = ndimage.binary_dilation(nodule, iterations=3) & ~nodule
        echo[halo] *= 0.35
    level = _LEVEL[features.echogenicity] * parenchyma
    inside = np.where(nodule, level, echo)
    if features.composition == "mixed":
        pools = (_field(rng, (rows, cols), max(semi_w, semi_h) / 6) > 0.6) & ndimage.binary_erosion(nodule, iterations=4)
        inside[pools] = 0.04
    elif features.composition == "spongiform":
        pores = (_field(rng, (rows, cols), 2.0) > 1.0) & nodule
        inside[pores] = 0.05
    elif features.composition == "cystic":
        inside[nodule] = 0.03
    echo = inside
    if features.margin == "ill-defined":  # the boundary fades into the lobe over a few pixels
        blurred = ndimage.gaussian_filter(echo, 4.0)
        ring = ndimage.binary_dilation(nodule, iterations=5) & ~ndimage.binary_erosion(nodule, iterations=5)
        echo[ring] = blurred[ring]
    if features.composition == "cystic" or features.echogenicity == "anechoic":
        echo[(np.abs(xx - n_cx) < semi_w * 0.8) & (yy > n_cy + semi_h) & ~nodule] *= 1.35  # enhancement

    _draw_foci(rng, echo, features.foci, nodule, n_cx, n_cy, semi_w, semi_h, xx, yy)

    # Acoustics: gamma speckle, lateral-long correlation, focal band, attenuation, power-law display.
    shape_k = rng.uniform(1.0, 3.0)
    speckle = rng.gamma(shape_k, 1.0 / shape_k, (rows, cols))
    speckle = ndimage.gaussian_filter(speckle, (rng.uniform(0.6, 1.0), rng.uniform(1.4, 2.4)))
    speckle /= speckle.mean()
    focus_y = rng.uniform(0.3, 0.6) * rows
    focal = 1 + rng.uniform(0.05, 0.2) * np.exp(-((yy - focus_y) / (0.15 * rows)) ** 2)
    attenuation = np.exp(-rng.uniform(0.004, 0.012) * yy * spacing * 10 * rng.uniform(0.2, 0.5))
    intensity = ndimage.gaussian_filter(echo, 0.8) * speckle * focal * attenuation
    intensity = intensity + rng.uniform(0.005, 0.02) * rng.random((rows, cols))
    display = np.clip(intensity / np.quantile(intensity, 0.995), 0, 1) ** rng.uniform(0.45, 0.7)
    image = (display * rng.uniform(220, 255)).astype(np.uint8)

    frame, region, mask = image, (0, 0, cols, rows), nodule
    if rng.random() < 0.5:
        top, left = int(rng.integers(30, 60)), int(rng.integers(30, 80))
        bottom, right = int(rng.integers(15, 40)), int(rng.integers(40, 90))
        frame = np.zeros((rows + top + bottom, cols + left + right), np.uint8)
        frame[top:top + rows, left:left + cols] = image
        for k in range(int(rows * spacing / 5) + 1):  # a tick every 5 mm beside the image
            y = top + int(round(k * 5 / spacing))
            if y < frame.shape[0]:
                frame[y, left + cols + 5:left + cols + (14 if k % 2 == 0 else 9)] = 200
        region = (left, top, left + cols, top + rows)
        mask = np.zeros(frame.shape, bool)
        mask[top:top + rows, left:left + cols] = nodule

    points = features.points
    # The largest distance across the drawn outline (maximum Feret diameter), in mm.
    diameter_mm = max_diameter_px(nodule, (spacing, spacing))
    return su.UltrasoundItem(
        frame=frame, mask=mask, region=region, pixel_spacing_mm=spacing, features=features, points=points,
        tirads=su.tirads_level(points), malignant=bool(rng.random() < external_risk(points)),
        max_diameter_mm=diameter_mm, has_ui=region != (0, 0, cols, rows),
    )


def _ellipse(xx, yy, cx, cy, rx, ry, angle=0.0) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    u, v = (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c
    return (u / rx) ** 2 + (v / ry) ** 2 < 1.0


def _draw_foci(rng, echo, foci, nodule, cx, cy, semi_w, semi_h, xx, yy) -> None:
    rows, cols = echo.shape
    if foci == "punctate":
        ys, xs = np.nonzero(ndimage.binary_erosion(nodule, iterations=3))
        for k in rng.choice(len(ys), size=min(len(ys), int(rng.integers(4, 12))), replace=False):
            echo[np.hypot(xx - xs[k], yy - ys[k]) < rng.uniform(1.0, 1.8)] = 3.5
    elif foci == "comet-tail":
        for _ in range(int(rng.integers(2, 5))):
            x0, y0 = cx + rng.uniform(-0.5, 0.5) * semi_w, cy + rng.uniform(-0.4, 0.3) * semi_h
            streak = (np.abs(xx - x0) < 1.0) & (yy >= y0) & (yy < y0 + rng.uniform(6, 14))
            echo[streak] = np.maximum(echo[streak], 2.8)
    elif foci == "macrocalcification":
        t = rng.uniform(0, 2 * np.pi)
        x0, y0 = cx + 0.35 * semi_w * math.cos(t), cy + 0.35 * semi_h * math.sin(t)
        r = max(3.0, 0.2 * min(semi_w, semi_h))
        echo[_ellipse(xx, yy, x0, y0, r * 1.3, r * 0.7)] = 3.2
        echo[(np.abs(xx - x0) < r * 1.1) & (yy > y0 + r * 0.7)] *= 0.15  # acoustic shadow
    elif foci == "peripheral":
        rim = nodule & ~ndimage.binary_erosion(nodule, iterations=2)
        arc = np.arctan2(yy - cy, xx - cx)
        start = rng.uniform(-np.pi, np.pi)
        rim &= ((arc - start) % (2 * np.pi)) < rng.uniform(2.0, 4.5)
        echo[rim] = 3.0


def iter_external(count: int):
    for index in range(count):
        yield external_item(index)


def split_or_external_item(split: str, index: int) -> su.UltrasoundItem:
    """Item `index` of a split of the training generator, or of this external set (split "external")."""
    return external_item(index) if split == "external" else su.split_item(split, index)
