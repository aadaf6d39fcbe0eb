"""Synthetic thyroid B-mode ultrasound frames with a known nodule mask, TI-RADS points and malignancy label.

Shared by both reference models of the thyroid-malignancy task (the segmentation model imports it from
here). Each frame is a transverse view through a thyroid lobe as a linear probe shows it: skin,
subcutaneous fat, strap muscle, the lobe with its bright capsule, the carotid artery beside it, the
trachea's bright arc medially, and one nodule. Tissue is an echogenicity map multiplied by fully
developed speckle (the Rayleigh envelope of band-limited complex Gaussian scatter), attenuated with
depth, log-compressed to a display dynamic range; the frame is then placed in a screenshot-like
canvas with a UI border, text and a depth scale about half the time.

The nodule's features are sampled first and drawn so that they are visible:

* composition  cystic / spongiform (0), mixed cystic-solid (1), solid (2)
* echogenicity anechoic (0), hyper- or isoechoic (1), hypoechoic (2), very hypoechoic (3)
* shape        wider-than-tall (0), taller-than-wide (3)
* margin       smooth or ill-defined (0), lobulated or irregular (2), extrathyroidal extension (3)
* foci         none or comet-tail (0), macrocalcification (1), peripheral rim (2), punctate (3)

Their sum is the ACR TI-RADS point total. The malignancy label is then *drawn* from a probability
that rises with the points (`malignancy_probability`), so two nodules with the same points can
differ in label; a perfect reader of the points reaches an AUC of about 0.97 on this link.

Physical pixel size is known for every frame (isotropic, 0.06-0.16 mm), so a test can write a DICOM US
instance with SequenceOfUltrasoundRegions around the same pixels. Everything is seeded: item `i` of a
split is a pure function of (split seed, i).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

# "untouched-test" was added after both thyroid models were fixed (version 1; the classifier had been retrained
# after "test" was read): a split first read once, for the card's headline. Disjoint from every seed in use:
# these split seeds, train.py's SEED 2468 ([2468, i, 7] and [2468]) and the tests' default_rng(5) and (6).
SPLIT_SEEDS = {"train": 610_001, "val": 620_002, "test": 630_003, "untouched-test": 650_005}

COMPOSITION_POINTS = {"cystic": 0, "spongiform": 0, "mixed": 1, "solid": 2}
ECHOGENICITY_POINTS = {"anechoic": 0, "hyperechoic": 1, "isoechoic": 1, "hypoechoic": 2, "very-hypoechoic": 3}
MARGIN_POINTS = {"smooth": 0, "ill-defined": 0, "lobulated": 2, "irregular": 2, "extrathyroidal": 3}
FOCI_POINTS = {"none": 0, "comet-tail": 0, "macrocalcification": 1, "peripheral": 2, "punctate": 3}
SHAPE_POINTS = {False: 0, True: 3}

# Mean echo amplitude relative to thyroid parenchyma (1.0).
_ECHO = {"anechoic": 0.04, "hyperechoic": 1.8, "isoechoic": 1.0, "hypoechoic": 0.5, "very-hypoechoic": 0.24}
_MUSCLE, _FAT, _SKIN, _CAPSULE = 0.36, 0.62, 1.5, 1.6


@dataclass(frozen=True)
class NoduleFeatures:
    composition: str
    echogenicity: str
    taller_than_wide: bool
    margin: str
    foci: str

    @property
    def points(self) -> int:
        return (
            COMPOSITION_POINTS[self.composition]
            + ECHOGENICITY_POINTS[self.echogenicity]
            + SHAPE_POINTS[self.taller_than_wide]
            + MARGIN_POINTS[self.margin]
            + FOCI_POINTS[self.foci]
        )


def tirads_level(points: int) -> int:
    """ACR TI-RADS level from the point total (0-1 points count as TR1)."""
    if points <= 1:
        return 1
    if points == 2:
        return 2
    if points == 3:
        return 3
    if points <= 6:
        return 4
    return 5


def malignancy_probability(points: int) -> float:
    """The synthetic world's risk of malignancy given the points: a logistic link, 50 % at 6 points.

    Steeper than real-world risk (ACR reports ~0.3 % for TR1 up to ~35 % for TR5) so that the label
    is learnable to the issue's AUC target; it is the calibration the reference classifier learns.
    """
    return 1.0 / (1.0 + math.exp(-1.6 * (points - 6.0)))


@dataclass(frozen=True)
class UltrasoundItem:
    frame: np.ndarray  # uint8, (H, W) grey or (H, W, 3) RGB when the UI is coloured
    mask: np.ndarray  # bool (H, W): the nodule
    region: tuple[int, int, int, int]  # imaging region in the frame: x0, y0, x1, y1 (exclusive)
    pixel_spacing_mm: float  # isotropic
    features: NoduleFeatures
    points: int
    tirads: int
    malignant: bool
    max_diameter_mm: float  # largest distance across the drawn nodule outline
    has_ui: bool


def sample_features(rng: np.random.Generator) -> NoduleFeatures:
    composition = rng.choice(["cystic", "spongiform", "mixed", "solid"], p=[0.1, 0.1, 0.25, 0.55])
    if composition == "cystic":
        foci = rng.choice(["none", "comet-tail"], p=[0.5, 0.5])
        return NoduleFeatures("cystic", "anechoic", False, str(rng.choice(["smooth", "ill-defined"])), str(foci))
    if composition == "spongiform":
        return NoduleFeatures("spongiform", "isoechoic", False, "smooth", str(rng.choice(["none", "comet-tail"])))
    suspicious = rng.random() < 0.5  # a latent tilt so that suspicious features travel together
    echo_p = [0.05, 0.15, 0.3, 0.35, 0.15] if suspicious else [0.0, 0.3, 0.4, 0.25, 0.05]
    echogenicity = rng.choice(["anechoic", "hyperechoic", "isoechoic", "hypoechoic", "very-hypoechoic"], p=echo_p)
    if echogenicity == "anechoic":
        echogenicity = "hypoechoic"
    taller = bool(rng.random() < (0.4 if suspicious else 0.1))
    margin_p = [0.2, 0.1, 0.2, 0.3, 0.2] if suspicious else [0.55, 0.2, 0.15, 0.08, 0.02]
    margin = rng.choice(["smooth", "ill-defined", "lobulated", "irregular", "extrathyroidal"], p=margin_p)
    foci_p = [0.2, 0.05, 0.15, 0.15, 0.45] if suspicious else [0.55, 0.15, 0.15, 0.1, 0.05]
    foci = rng.choice(["none", "comet-tail", "macrocalcification", "peripheral", "punctate"], p=foci_p)
    return NoduleFeatures(str(composition), str(echogenicity), taller, str(margin), str(foci))


# --- geometry --------------------------------------------------------------------------------------


def _nodule_radius_function(rng: np.random.Generator, margin: str) -> tuple[np.ndarray, np.ndarray]:
    """Harmonic coefficients (amplitudes, phases) of the outline's relative radius perturbation."""
    amps = np.zeros(24)
    phases = rng.uniform(0, 2 * np.pi, 24)
    amps[2:4] = rng.uniform(0.0, 0.03, 2)
    if margin == "lobulated":
        k = rng.integers(3, 6)
        amps[k] = rng.uniform(0.12, 0.2)
        amps[k + 1] = rng.uniform(0.0, 0.06)
    elif margin in ("irregular", "extrathyroidal"):
        for k in rng.choice(np.arange(6, 20), size=5, replace=False):
            amps[k] = rng.uniform(0.04, 0.085)
    return amps, phases


def _radius(theta: np.ndarray, a: float, b: float, amps: np.ndarray, phases: np.ndarray) -> np.ndarray:
    ellipse = a * b / np.sqrt((b * np.cos(theta)) ** 2 + (a * np.sin(theta)) ** 2)
    perturbation = np.zeros_like(theta)
    for k in np.flatnonzero(amps):
        perturbation += amps[k] * np.cos(k * theta + phases[k])
    return ellipse * (1.0 + perturbation)


def _max_outline_distance(cx: float, cy: float, a: float, b: float, amps, phases) -> float:
    theta = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    r = _radius(theta, a, b, amps, phases)
    pts = np.stack([cx + r * np.cos(theta), cy + r * np.sin(theta)], axis=1)
    d = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1))
    return float(d.max())


def _ellipse(xx, yy, cx, cy, ax, ay) -> np.ndarray:
    return ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2


# --- rendering -------------------------------------------------------------------------------------


def _speckle(rng: np.random.Generator, shape: tuple[int, int], grain_px: float) -> np.ndarray:
    """Rayleigh-distributed speckle with mean 1: the envelope of band-limited complex Gaussian scatter."""
    re = ndimage.gaussian_filter(rng.standard_normal(shape), (0.6 * grain_px, 1.3 * grain_px))
    im = ndimage.gaussian_filter(rng.standard_normal(shape), (0.6 * grain_px, 1.3 * grain_px))
    envelope = np.hypot(re, im)
    return envelope / envelope.mean()


def generate_frame(rng: np.random.Generator, features: NoduleFeatures | None = None,
                   ui: bool | None = None) -> UltrasoundItem:
    features = features or sample_features(rng)
    rows = int(rng.integers(300, 421))
    cols = int(rng.integers(360, 521))
    fov_mm = float(rng.uniform(32.0, 60.0))  # linear probe footprint
    spacing = fov_mm / cols
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    depth_mm = yy * spacing

    # Nodule size in mm, then the lobe around it.
    diameter_mm = float(np.clip(rng.lognormal(math.log(17.0), 0.45), 6.0, 36.0))
    diameter_mm = min(diameter_mm, 0.62 * rows * spacing, 0.6 * cols * spacing)
    base_r = diameter_mm / 2 / spacing
    if features.taller_than_wide:
        ratio = rng.uniform(1.2, 1.6)  # height / width
    else:
        ratio = rng.uniform(0.55, 0.88)
    a = base_r / math.sqrt(ratio) if ratio > 1 else base_r  # horizontal semi-axis
    b = a * ratio
    scale = base_r / max(a, b)
    a, b = a * scale, b * scale
    amps, phases = _nodule_radius_function(rng, features.margin)

    skin = rng.uniform(1.5, 2.5) / spacing
    fat = skin + rng.uniform(1.0, 3.0) / spacing
    strap = fat + rng.uniform(2.0, 4.5) / spacing
    lobe_ax = max(a * rng.uniform(1.35, 1.7), 7.0 / spacing)
    lobe_ay = b * rng.uniform(1.3, 1.6) + 2.0 / spacing
    lobe_cy = strap + lobe_ay * 0.96
    if lobe_cy + lobe_ay > rows - 4:
        lobe_cy = rows - 4 - lobe_ay
    lobe_cx = cols * rng.uniform(0.38, 0.62)
    nod_cx = lobe_cx + rng.uniform(-0.25, 0.25) * (lobe_ax - a)
    nod_cy = lobe_cy + rng.uniform(-0.2, 0.25) * (lobe_ay - b)
    if features.margin == "extrathyroidal":
        # Push the nodule through the capsule (anteriorly or laterally) so that it breaks the bright line.
        if rng.random() < 0.6:
            nod_cy = lobe_cy - lobe_ay + b * rng.uniform(0.3, 0.6)
        else:
            side = rng.choice([-1, 1])
            nod_cx = lobe_cx + side * (lobe_ax - a * rng.uniform(0.3, 0.6))
    nod_cy = float(np.clip(nod_cy, b + 3, rows - b - 3))
    nod_cx = float(np.clip(nod_cx, a + 3, cols - a - 3))

    echo = np.full((rows, cols), _FAT * 0.9, np.float32)  # deep tissue
    echo[yy < skin] = _SKIN
    echo[(yy >= skin) & (yy < fat)] = _FAT
    strap_band = (yy >= fat) & (yy < strap)
    echo[strap_band] = _MUSCLE
    lobe_q = _ellipse(xx, yy, lobe_cx, lobe_cy, lobe_ax, lobe_ay)
    # The strap muscle drapes over the lobe.
    echo[(lobe_q < 1.25) & (yy < lobe_cy) & (yy >= fat)] = _MUSCLE
    inner = (1.0 - 0.6 / spacing / min(lobe_ax, lobe_ay)) ** 2  # a capsule about 0.6 mm thick
    capsule = (lobe_q >= inner) & (lobe_q < 1.0)
    lobe = lobe_q < inner
    thyroid_echo = 1.0
    echo[capsule] = _CAPSULE
    echo[lobe] = thyroid_echo
    # Subcutaneous septa: a few bright horizontal streaks.
    for _ in range(int(rng.integers(1, 4))):
        y0 = rng.uniform(skin, fat)
        echo[np.abs(yy - y0) < 1.0 + 0.3 * rng.random()] *= 1.6
    # Carotid artery lateral to the lobe, trachea medial.
    carotid_side = rng.choice([-1, 1])
    car_r = rng.uniform(2.8, 3.8) / spacing
    car_cx = lobe_cx + carotid_side * (lobe_ax + car_r * 0.9)
    car_cy = lobe_cy + rng.uniform(-0.2, 0.3) * lobe_ay
    car_q = _ellipse(xx, yy, car_cx, car_cy, car_r, car_r)
    echo[(car_q >= 1.0) & (car_q < 1.35)] = 1.3
    echo[car_q < 1.0] = 0.03
    tr_r = rng.uniform(7.0, 10.0) / spacing
    tr_cx = lobe_cx - carotid_side * (lobe_ax + tr_r * 0.7)
    tr_cy = lobe_cy - lobe_ay * 0.2
    tr_q = _ellipse(xx, yy, tr_cx, tr_cy, tr_r, tr_r)
    arc = (tr_q < 1.0) & (tr_q >= 0.8) & (yy < tr_cy)
    echo[arc] = 1.9
    # Air: reverberation bands under the bright arc, then shadow.
    air = (tr_q < 0.8) | ((yy >= tr_cy) & (np.abs(xx - tr_cx) < tr_r))
    echo[air] = 0.1 + 0.25 * (np.cos(2 * np.pi * (yy[air] - tr_cy) / (0.2 * tr_r)) > 0.7)
    # Coarse tissue heterogeneity.
    echo *= 1.0 + 0.12 * ndimage.gaussian_filter(rng.standard_normal((rows, cols)), 6.0) * 6.0

    # --- the nodule --------------------------------------------------------------------------------
    theta = np.arctan2(yy - nod_cy, xx - nod_cx)
    dist = np.hypot(xx - nod_cx, yy - nod_cy)
    boundary = _radius(theta, a, b, amps, phases)
    rel = dist / boundary  # < 1 inside
    mask = rel < 1.0
    inner_echo = _ECHO[features.echogenicity] * thyroid_echo
    nodule_echo = np.full((rows, cols), inner_echo, np.float32)
    if features.composition == "mixed":
        cysts = ndimage.gaussian_filter(rng.standard_normal((rows, cols)), max(a, b) / 5)
        cysts = cysts > np.quantile(cysts[mask], rng.uniform(0.45, 0.7))
        nodule_echo[cysts] = _ECHO["anechoic"]
    elif features.composition == "spongiform":
        micro = ndimage.gaussian_filter(rng.standard_normal((rows, cols)), 1.6)
        micro = micro > np.quantile(micro[mask], 0.45)
        nodule_echo[micro] = 0.12
        nodule_echo[~micro] = 1.25
    if features.echogenicity == "isoechoic" or features.composition in ("cystic",):
        halo = (rel >= 0.9) & (rel < 1.08)
        echo[halo & ~mask] = 0.3
        nodule_echo[(rel >= 0.9) & mask] = 0.3 if features.composition != "cystic" else 1.4
    if features.margin == "ill-defined":
        weight = np.clip((1.15 - rel) / 0.3, 0.0, 1.0)
    else:
        weight = np.clip((1.0 - rel) / 0.04 + 0.5, 0.0, 1.0)
    echo = echo * (1 - weight) + nodule_echo * weight

    # Posterior enhancement behind fluid, shadowing behind calcification.
    column = np.abs(xx - nod_cx) < 0.8 * a
    below = yy > nod_cy + b * 0.8
    if features.composition == "cystic":
        echo[column & below] *= 1.45

    speckle_grain = rng.uniform(0.9, 1.4)
    def dot(cx, cy, radius, value):
        echo[_ellipse(xx, yy, cx, cy, radius, radius) < 1.0] = value

    if features.foci == "punctate":
        n = int(rng.integers(3, 9))
        rad = max(1.3, 0.035 * max(a, b))
        for _ in range(n):
            r, t = math.sqrt(rng.uniform(0, 0.55)), rng.uniform(0, 2 * np.pi)
            dot(nod_cx + r * a * math.cos(t), nod_cy + r * b * math.sin(t), rad, 3.2)
    elif features.foci == "comet-tail":
        for _ in range(int(rng.integers(1, 3))):
            cx = nod_cx + rng.uniform(-0.4, 0.4) * a
            cy = nod_cy + rng.uniform(-0.5, 0.2) * b
            tail = (np.abs(xx - cx) < 1.2) & (yy >= cy) & (yy < cy + 0.3 * b)
            echo[tail] = np.maximum(echo[tail], 2.5 * np.exp(-(yy[tail] - cy) / (0.12 * b)))
            dot(cx, cy, 1.6, 3.0)
    elif features.foci == "macrocalcification":
        t = rng.uniform(0, 2 * np.pi)
        cx, cy = nod_cx + 0.3 * a * math.cos(t), nod_cy + 0.3 * b * math.sin(t)
        rad = max(3.0, 0.16 * max(a, b))
        blob = _ellipse(xx, yy, cx, cy, rad * 1.4, rad * 0.8) < 1.0
        echo[blob] = 3.0
        echo[(np.abs(xx - cx) < rad * 1.2) & (yy > cy + rad * 0.8)] *= 0.22
    elif features.foci == "peripheral":
        t0 = rng.uniform(0, 2 * np.pi)
        span = rng.uniform(1.5, 3.5)
        angle = (theta - t0) % (2 * np.pi)
        rim = (rel >= 0.86) & (rel < 1.0) & (angle < span)
        echo[rim] = 3.0
        top_rim_x = xx[rim & (yy < nod_cy)]
        if top_rim_x.size:
            echo[(xx >= top_rim_x.min()) & (xx <= top_rim_x.max()) & below] *= 0.3

    # --- acoustics -----------------------------------------------------------------------------------
    attenuation_db_per_mm = rng.uniform(0.05, 0.12)
    tgc = rng.uniform(0.5, 0.9)  # fraction of the attenuation the time-gain compensation undoes
    gain_db = -attenuation_db_per_mm * (1 - tgc) * depth_mm
    echo_smooth = ndimage.gaussian_filter(echo, 0.7)
    amplitude = echo_smooth * _speckle(rng, (rows, cols), speckle_grain) * 10 ** (gain_db / 20)
    amplitude += 0.015 * np.abs(rng.standard_normal((rows, cols)))  # electronic noise floor
    dynamic_range = rng.uniform(45.0, 60.0)
    overall = rng.uniform(-4.0, 4.0)
    db = 20 * np.log10(amplitude + 1e-6) + overall
    image = np.clip((db + dynamic_range * 0.72) / dynamic_range, 0, 1) * 255
    image = np.clip(image * rng.uniform(0.9, 1.1), 0, 255).astype(np.uint8)

    max_diameter_mm = _max_outline_distance(nod_cx, nod_cy, a, b, amps, phases) * spacing
    has_ui = bool(rng.random() < 0.55) if ui is None else ui
    frame, region = _place_in_screen(rng, image, spacing, has_ui)
    full_mask = np.zeros(frame.shape[:2], bool)
    x0, y0, x1, y1 = region
    full_mask[y0:y1, x0:x1] = mask
    malignant = bool(rng.random() < malignancy_probability(features.points))
    return UltrasoundItem(
        frame=frame, mask=full_mask, region=region, pixel_spacing_mm=float(spacing), features=features,
        points=features.points, tirads=tirads_level(features.points), malignant=malignant,
        max_diameter_mm=float(max_diameter_mm), has_ui=has_ui,
    )


_LABELS = ("THY R TRV", "THY L TRV", "THYROID", "L12-5", "12L-RS", "Gn 52", "DR 60", "FR 32", "MI 0.9",
           "TIs 0.2", "ML 6-13MHz", "Res", "2D", "Neck", "PWR 100%")


def _place_in_screen(rng: np.random.Generator, image: np.ndarray, spacing: float,
                     has_ui: bool) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    rows, cols = image.shape
    if not has_ui:
        return image, (0, 0, cols, rows)
    top, bottom = int(rng.integers(28, 70)), int(rng.integers(10, 60))
    left, right = int(rng.integers(20, 90)), int(rng.integers(40, 120))
    height, width = rows + top + bottom, cols + left + right
    background = int(rng.integers(0, 18))
    colour = rng.random() < 0.4
    canvas = Image.new("RGB", (width, height), (background,) * 3)
    canvas.paste(Image.fromarray(image).convert("RGB"), (left, top))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    text_colour = (230, 200, 40) if colour else (220, 220, 220)
    x = 4
    for label in rng.choice(_LABELS, size=int(rng.integers(2, 5)), replace=False):
        draw.text((x, 4 + int(rng.integers(0, max(1, top - 16)))), str(label), fill=text_colour, font=font)
        x += 8 * len(label) + int(rng.integers(10, 40))
        if x > width - 60:
            break
    # Depth scale: a tick every centimetre to the right of the image, labelled in cm.
    mm_per_tick = 10.0
    tick_x = left + cols + 4
    for k in range(int(rows * spacing / mm_per_tick) + 1):
        y = top + int(round(k * mm_per_tick / spacing))
        draw.line([(tick_x, y), (tick_x + 6, y)], fill=text_colour)
        if right > 30:
            draw.text((tick_x + 9, max(y - 5, 0)), str(k), fill=text_colour, font=font)
    # A greyscale bar far right, apart from the image.
    if right > 60:
        bar_x = width - 14
        for y in range(top, top + rows // 2):
            shade = int(255 * (1 - (y - top) / (rows / 2)))
            draw.line([(bar_x, y), (bar_x + 8, y)], fill=(shade,) * 3)
    if rng.random() < 0.5:
        draw.text((4, height - 14), "Patient  Anon  12cm/s", fill=text_colour, font=font)
    frame = np.asarray(canvas)
    if not colour:
        frame = np.ascontiguousarray(frame[..., 0])
    return frame, (left, top, left + cols, top + rows)


def split_item(split: str, index: int) -> UltrasoundItem:
    return generate_frame(np.random.default_rng([SPLIT_SEEDS[split], index]))


def iter_split(split: str, count: int, start: int = 0) -> Iterator[UltrasoundItem]:
    for index in range(start, start + count):
        yield split_item(split, index)
