"""Synthetic colour fundus photographs whose ICDR diabetic-retinopathy grade follows from the lesions drawn.

The generator first decides which lesions to draw for the requested grade, draws exactly those, counts
them, and derives the grade from the counts with `icdr_grade` (the International Clinical DR scale):

    0 No DR            no lesions
    1 Mild NPDR        microaneurysms only
    2 Moderate NPDR    more than microaneurysms (haemorrhages, hard exudates, cotton-wool spots)
                       but less than severe
    3 Severe NPDR      >= 20 intraretinal haemorrhages in each of the four quadrants,
                       and/or definite venous beading in >= 2 quadrants
    4 Proliferative DR neovascularisation (at the disc or elsewhere) and/or preretinal/vitreous haemorrhage

Quadrants are split at the centre of the field of view: superior/inferior by row, nasal/temporal by
whether a point lies on the optic-disc side. IRMA (the third "4-2-1" criterion) is not drawn.

Run as a script to write PNGs and labels.csv:
    python models/dr-grading-reference/synthetic_fundus.py --out DIR --n N [--split train|val|test]
"""

from __future__ import annotations

import argparse
import csv
import io
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

GRADE_NAMES = ("No DR", "Mild NPDR", "Moderate NPDR", "Severe NPDR", "Proliferative DR")

# Fixed seeds make every split reproducible; distinct seeds make their random streams (and so their
# images) disjoint. Image i of a split is drawn from SeedSequence([split seed, i]), so any image can be
# regenerated alone and a subset of a split is a prefix of the full split.
SPLIT_SEEDS = {"train": 20_240_101, "val": 20_240_202, "test": 20_240_303}

SEVERE_HAEMORRHAGES_PER_QUADRANT = 20
SEVERE_BEADING_QUADRANTS = 2


@dataclass(frozen=True)
class LesionCounts:
    microaneurysms: int = 0
    haemorrhages_per_quadrant: tuple[int, int, int, int] = (0, 0, 0, 0)
    hard_exudates: int = 0
    cotton_wool_spots: int = 0
    venous_beading_quadrants: int = 0
    neovascular_tufts: int = 0
    preretinal_haemorrhages: int = 0

    @property
    def haemorrhages(self) -> int:
        return sum(self.haemorrhages_per_quadrant)

    @property
    def total(self) -> int:
        return (
            self.microaneurysms
            + self.haemorrhages
            + self.hard_exudates
            + self.cotton_wool_spots
            + self.venous_beading_quadrants
            + self.neovascular_tufts
            + self.preretinal_haemorrhages
        )


def icdr_grade(lesions: LesionCounts) -> int:
    """The ICDR grade the drawn lesions amount to."""
    if lesions.neovascular_tufts > 0 or lesions.preretinal_haemorrhages > 0:
        return 4
    severe_haemorrhages = min(lesions.haemorrhages_per_quadrant) >= SEVERE_HAEMORRHAGES_PER_QUADRANT
    if severe_haemorrhages or lesions.venous_beading_quadrants >= SEVERE_BEADING_QUADRANTS:
        return 3
    if lesions.haemorrhages > 0 or lesions.hard_exudates > 0 or lesions.cotton_wool_spots > 0:
        return 2
    if lesions.microaneurysms > 0:
        return 1
    return 0


@dataclass
class SyntheticFundus:
    rgb: np.ndarray  # HxWx3 uint8
    grade: int
    lesions: LesionCounts
    split: str | None = None
    index: int | None = None


@dataclass
class _Plan:
    """How many lesions of each kind to draw; drawing may place fewer if there is no room."""

    microaneurysms: int = 0
    haemorrhages_per_quadrant: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    hard_exudates: int = 0
    cotton_wool_spots: int = 0
    beading_quadrants: list[int] = field(default_factory=list)
    neovascular_tufts: int = 0
    preretinal_haemorrhages: int = 0


def _plan_lesions(rng: np.random.Generator, grade: int) -> _Plan:
    plan = _Plan()
    if grade == 0:
        return plan
    if grade == 1:
        plan.microaneurysms = int(rng.integers(1, 13))
        return plan
    background = grade if grade < 4 else int(rng.choice([1, 2, 3], p=[0.2, 0.5, 0.3]))
    if background >= 1:
        plan.microaneurysms = int(rng.integers(1 if grade == 1 else 0, 16))
    if background == 2:
        _plan_moderate(rng, plan)
    if background == 3:
        _plan_moderate(rng, plan)
        by_haemorrhages = rng.random() < 0.75
        by_beading = (not by_haemorrhages) or rng.random() < 0.35
        if by_haemorrhages:
            plan.haemorrhages_per_quadrant = [int(n) for n in rng.integers(22, 34, size=4)]
        if by_beading:
            plan.beading_quadrants = sorted(rng.choice(4, size=int(rng.integers(2, 5)), replace=False).tolist())
    if grade == 4:
        with_nv = rng.random() < 0.85
        with_preretinal = (not with_nv) or rng.random() < 0.3
        plan.neovascular_tufts = int(rng.integers(1, 4)) if with_nv else 0
        plan.preretinal_haemorrhages = 1 if with_preretinal else 0
    return plan


def _plan_moderate(rng: np.random.Generator, plan: _Plan) -> None:
    """More than microaneurysms, but no quadrant set that could reach the severe haemorrhage count."""
    kinds = rng.random(3) < [0.8, 0.55, 0.35]
    if not kinds.any():
        kinds[0] = True
    if kinds[0]:
        total = int(rng.integers(1, 30))
        quadrants = rng.integers(0, 4, size=total)
        plan.haemorrhages_per_quadrant = np.bincount(quadrants, minlength=4).tolist()
    if kinds[1]:
        plan.hard_exudates = int(rng.integers(3, 30))
    if kinds[2]:
        plan.cotton_wool_spots = int(rng.integers(1, 5))


# --------------------------------------------------------------------------------------------------
# Geometry of one photograph


@dataclass
class _Eye:
    height: int
    width: int
    cx: float  # field-of-view centre and radius, pixels
    cy: float
    radius: float
    disc_x: float  # optic disc centre and radius
    disc_y: float
    disc_r: float
    macula_x: float
    macula_y: float
    nasal_sign: int  # +1 when the disc (nasal side) is right of the centre

    def inside(self, x: np.ndarray, y: np.ndarray, margin: float = 0.95) -> np.ndarray:
        in_fov = (x - self.cx) ** 2 + (y - self.cy) ** 2 < (margin * self.radius) ** 2
        in_frame = (x >= 2) & (x < self.width - 2) & (y >= 2) & (y < self.height - 2)
        return in_fov & in_frame

    def quadrant(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """0 superotemporal, 1 superonasal, 2 inferonasal, 3 inferotemporal."""
        nasal = (x - self.cx) * self.nasal_sign > 0
        inferior = y > self.cy
        return np.where(inferior, np.where(nasal, 2, 3), np.where(nasal, 1, 0))


def _make_eye(rng: np.random.Generator, size: int) -> _Eye:
    width = size
    radius = width * rng.uniform(0.42, 0.49)
    # Half the photographs are landscape with the disc cut at the top and bottom, as many cameras do.
    height = width if rng.random() < 0.5 else int(width * rng.uniform(0.72, 0.95))
    cx = width / 2 + rng.uniform(-0.05, 0.05) * width
    cy = height / 2 + rng.uniform(-0.05, 0.05) * height
    nasal_sign = 1 if rng.random() < 0.5 else -1  # right or left eye
    disc_x = cx + nasal_sign * radius * rng.uniform(0.35, 0.5)
    disc_y = cy + radius * rng.uniform(-0.1, 0.1)
    disc_r = radius * rng.uniform(0.085, 0.115)
    macula_x = disc_x - nasal_sign * radius * rng.uniform(0.45, 0.55)
    macula_y = disc_y + radius * rng.uniform(0.0, 0.08)
    return _Eye(height, width, cx, cy, radius, disc_x, disc_y, disc_r, macula_x, macula_y, nasal_sign)


def _sample_points(rng: np.random.Generator, eye: _Eye, n: int, quadrant: int | None = None,
                   avoid_disc: bool = True, margin: float = 0.93) -> np.ndarray:
    """n points (x, y) uniformly over the visible retina, optionally within one quadrant."""
    if n <= 0:
        return np.zeros((0, 2))
    found: list[np.ndarray] = []
    have = 0
    for _ in range(20):
        r = eye.radius * margin * np.sqrt(rng.random(4 * n + 16))
        t = rng.uniform(0, 2 * np.pi, r.shape[0])
        x, y = eye.cx + r * np.cos(t), eye.cy + r * np.sin(t)
        keep = eye.inside(x, y, margin)
        if quadrant is not None:
            keep &= eye.quadrant(x, y) == quadrant
        if avoid_disc:
            keep &= (x - eye.disc_x) ** 2 + (y - eye.disc_y) ** 2 > (1.4 * eye.disc_r) ** 2
        pts = np.stack([x[keep], y[keep]], axis=1)
        found.append(pts)
        have += len(pts)
        if have >= n:
            break
    return np.concatenate(found)[:n]


# --------------------------------------------------------------------------------------------------
# Vessels


def _grow_vessels(rng: np.random.Generator, eye: _Eye, width0: float, angle_jitter: float):
    """Branching vessel tree from the disc: a list of (polyline points, width in px)."""
    step = 0.025 * eye.radius
    min_width = max(0.8, 0.004 * eye.radius)
    side = -eye.nasal_sign  # direction of the macula (temporal) along x
    up_t, down_t = np.arctan2(-0.75, side * 0.65), np.arctan2(0.75, side * 0.65)
    up_n, down_n = np.arctan2(-0.8, -side * 0.5), np.arctan2(0.8, -side * 0.5)
    # Temporal arcades curve around the macula; nasal trunks run nearly straight.
    trunks = [
        (up_t, width0, 0.045 * side, 60),
        (down_t, width0, -0.045 * side, 60),
        (up_n, 0.75 * width0, 0.0, 40),
        (down_n, 0.75 * width0, 0.0, 40),
    ]
    branches = []
    stack = []
    for angle, width, curl, steps in trunks:
        angle += rng.normal(0, angle_jitter)
        x = eye.disc_x + 0.3 * eye.disc_r * np.cos(angle)
        y = eye.disc_y + 0.3 * eye.disc_r * np.sin(angle)
        stack.append((x, y, angle, width, curl, steps))
    while stack:
        x, y, angle, width, curl, steps = stack.pop()
        points = [(x, y)]
        for i in range(steps):
            angle += curl + rng.normal(0, 0.1)
            x += step * np.cos(angle)
            y += step * np.sin(angle)
            points.append((x, y))
            if (x - eye.cx) ** 2 + (y - eye.cy) ** 2 > (0.99 * eye.radius) ** 2:
                break
            if i >= 3 and rng.random() < 0.09 and width * 0.62 >= min_width:
                turn = rng.choice([-1, 1]) * rng.uniform(0.45, 1.0)
                stack.append((x, y, angle + turn, width * 0.62, curl * 0.3, int(steps * 0.6)))
                stack.append((x, y, angle - 0.25 * turn, width * 0.85, curl, steps - i - 1))
                break
        if len(points) > 1:
            branches.append((np.asarray(points), width))
    return branches


def _draw_polylines(draw: ImageDraw.ImageDraw, branches, fill: int = 255) -> None:
    for points, width in branches:
        draw.line([tuple(p) for p in points], fill=fill, width=max(1, int(round(width))), joint="curve")


def _draw_beading(rng: np.random.Generator, draw: ImageDraw.ImageDraw, eye: _Eye, veins,
                  quadrants: list[int]) -> int:
    """Sausage-like dilations along the larger veins of the given quadrants; returns quadrants beaded."""
    beaded = set()
    for points, width in veins:
        if width < 2.0:
            continue
        q = eye.quadrant(points[:, 0], points[:, 1])
        in_fov = eye.inside(points[:, 0], points[:, 1], 0.93)
        far_from_disc = np.hypot(points[:, 0] - eye.disc_x, points[:, 1] - eye.disc_y) > 2.0 * eye.disc_r
        for quadrant in quadrants:
            idx = np.flatnonzero((q == quadrant) & in_fov & far_from_disc)
            if idx.size < 3:
                continue
            # Interpolate along the polyline so beads are evenly spaced, ~3 vessel widths apart.
            seg = points[idx[0] : idx[-1] + 1]
            lengths = np.r_[0, np.cumsum(np.hypot(*np.diff(seg, axis=0).T))]
            spacing = max(3.0 * width, 4.0)
            stops = np.arange(0, lengths[-1], spacing)
            if stops.size < 3:
                continue
            bx = np.interp(stops, lengths, seg[:, 0])
            by = np.interp(stops, lengths, seg[:, 1])
            radii = width * rng.uniform(1.0, 1.5, size=stops.size)
            for x, y, r in zip(bx, by, radii):
                draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
            beaded.add(quadrant)
    return len(beaded)


def _draw_tuft(rng: np.random.Generator, draw: ImageDraw.ImageDraw, eye: _Eye, x0: float, y0: float) -> None:
    """A neovascular frond: many fine, tortuous, looping vessels in a small patch."""
    extent = eye.radius * rng.uniform(0.06, 0.11)
    width = max(1, int(round(0.006 * eye.radius)))
    step = 0.012 * eye.radius
    for _ in range(int(rng.integers(10, 18))):
        x, y = x0 + rng.normal(0, 0.3 * extent), y0 + rng.normal(0, 0.3 * extent)
        angle = rng.uniform(0, 2 * np.pi)
        points = [(x, y)]
        for _ in range(int(rng.integers(8, 16))):
            angle += rng.normal(0.5, 0.6)  # a steady turn plus jitter makes loops and corkscrews
            x += step * np.cos(angle)
            y += step * np.sin(angle)
            if np.hypot(x - x0, y - y0) > extent:
                angle += np.pi  # stay inside the frond
            points.append((x, y))
        draw.line(points, fill=255, width=width, joint="curve")


# --------------------------------------------------------------------------------------------------
# Lesions


def _blob(draw: ImageDraw.ImageDraw, rng: np.random.Generator, x: float, y: float, r: float, lobes: int,
          fill: int = 255) -> None:
    """An irregular blob made of overlapping discs (blot haemorrhages, exudates, cotton-wool spots)."""
    for _ in range(lobes):
        dx, dy = rng.normal(0, 0.35 * r, 2) if lobes > 1 else (0.0, 0.0)
        rr = r * (rng.uniform(0.6, 1.0) if lobes > 1 else 1.0)
        draw.ellipse((x + dx - rr, y + dy - rr, x + dx + rr, y + dy + rr), fill=fill)


def _draw_lesions(rng: np.random.Generator, eye: _Eye, plan: _Plan, veins) -> tuple[dict, LesionCounts]:
    size = (eye.width, eye.height)
    layers = {name: Image.new("L", size, 0) for name in ("red", "yellow", "white", "vessel", "preretinal")}
    draws = {name: ImageDraw.Draw(img) for name, img in layers.items()}
    R = eye.radius

    mas = _sample_points(rng, eye, plan.microaneurysms)
    for x, y in mas:
        _blob(draws["red"], rng, x, y, R * rng.uniform(0.009, 0.014), 1)

    haem_counts = [0, 0, 0, 0]
    for quadrant, n in enumerate(plan.haemorrhages_per_quadrant):
        pts = _sample_points(rng, eye, n, quadrant=quadrant)
        haem_counts[quadrant] = len(pts)
        for x, y in pts:
            if rng.random() < 0.3:  # flame-shaped: a short streak
                angle = rng.uniform(0, np.pi)
                length = R * rng.uniform(0.03, 0.06)
                dx, dy = length * np.cos(angle), length * np.sin(angle)
                w = max(2, int(R * rng.uniform(0.012, 0.02)))
                draws["red"].line((x - dx, y - dy, x + dx, y + dy), fill=255, width=w)
            else:  # dot or blot
                _blob(draws["red"], rng, x, y, R * rng.uniform(0.016, 0.04), int(rng.integers(1, 4)))

    exudates = 0
    if plan.hard_exudates:
        # Hard exudates cluster, often in a ring around the macula.
        n_clusters = max(1, plan.hard_exudates // 6)
        centres = _sample_points(rng, eye, n_clusters)
        near_macula = rng.random(len(centres)) < 0.5
        centres[near_macula] = [eye.macula_x, eye.macula_y] + rng.normal(0, 0.15 * R, (near_macula.sum(), 2))
        for i in range(plan.hard_exudates):
            cx, cy = centres[i % len(centres)]
            x, y = cx + rng.normal(0, 0.04 * R), cy + rng.normal(0, 0.04 * R)
            if eye.inside(np.array([x]), np.array([y]), 0.93)[0]:
                _blob(draws["yellow"], rng, x, y, R * rng.uniform(0.007, 0.016), int(rng.integers(1, 3)))
                exudates += 1

    cws = _sample_points(rng, eye, plan.cotton_wool_spots, margin=0.7)
    for x, y in cws:
        _blob(draws["white"], rng, x, y, R * rng.uniform(0.03, 0.05), 3)

    beading = _draw_beading(rng, draws["vessel"], eye, veins, plan.beading_quadrants) if plan.beading_quadrants else 0

    tufts = 0
    for _ in range(plan.neovascular_tufts):
        if rng.random() < 0.5:  # at the disc (NVD)
            angle = rng.uniform(0, 2 * np.pi)
            x = eye.disc_x + eye.disc_r * rng.uniform(0.0, 1.3) * np.cos(angle)
            y = eye.disc_y + eye.disc_r * rng.uniform(0.0, 1.3) * np.sin(angle)
        else:  # elsewhere (NVE), typically beside a vessel
            big = [p for p, w in veins if w >= 1.5 and len(p) > 2]
            points = big[int(rng.integers(len(big)))] if big else _sample_points(rng, eye, 1)
            x, y = points[int(rng.integers(len(points)))]
            if not eye.inside(np.array([x]), np.array([y]), 0.85)[0]:
                x, y = _sample_points(rng, eye, 1, margin=0.8)[0]
        _draw_tuft(rng, draws["vessel"], eye, x, y)
        tufts += 1

    preretinal = 0
    for _ in range(plan.preretinal_haemorrhages):
        x, y = _sample_points(rng, eye, 1, margin=0.6)[0]
        r = R * rng.uniform(0.1, 0.18)
        # Boat-shaped: blood settles under gravity, leaving a flat upper level.
        draws["preretinal"].ellipse((x - r, y - r, x + r, y + r), fill=255)
        draws["preretinal"].rectangle((x - r - 1, y - r - 1, x + r + 1, y - r * rng.uniform(0.1, 0.5)), fill=0)
        preretinal += 1

    counts = LesionCounts(
        microaneurysms=len(mas),
        haemorrhages_per_quadrant=tuple(haem_counts),
        hard_exudates=exudates,
        cotton_wool_spots=len(cws),
        venous_beading_quadrants=beading,
        neovascular_tufts=tufts,
        preretinal_haemorrhages=preretinal,
    )
    return layers, counts


# --------------------------------------------------------------------------------------------------
# Rendering


def _alpha(layer: Image.Image, blur: float) -> np.ndarray | None:
    """A drawn layer as float alpha (HxWx1), or None when nothing was drawn on it."""
    if layer.getbbox() is None:
        return None
    if blur > 0:
        layer = layer.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(layer, dtype=np.float32)[..., None] * (1.0 / 255.0)


def _darken(img: np.ndarray, alpha: np.ndarray | None, strength: float, absorb: tuple) -> np.ndarray:
    """Absorbing structures (blood) darken each channel by its own fraction."""
    if alpha is None:
        return img
    return img * (1.0 - strength * alpha * np.asarray(absorb, np.float32))


def _tint(img: np.ndarray, alpha: np.ndarray | None, strength: float, colour: tuple) -> np.ndarray:
    """Reflective structures (exudates, cotton wool) move pixels toward their colour."""
    if alpha is None:
        return img
    return img + strength * alpha * (np.asarray(colour, np.float32) - img)


def _box(cx: float, cy: float, half: float, height: int, width: int) -> tuple[slice, slice]:
    y0, y1 = max(0, int(cy - half)), min(height, int(cy + half) + 1)
    x0, x1 = max(0, int(cx - half)), min(width, int(cx + half) + 1)
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


def _render(rng: np.random.Generator, lesion_rng: np.random.Generator, eye: _Eye,
            plan: _Plan) -> tuple[np.ndarray, LesionCounts]:
    H, W, R = eye.height, eye.width, eye.radius
    ys = np.arange(H, dtype=np.float32)[:, None]
    xs = np.arange(W, dtype=np.float32)[None, :]
    dist = np.sqrt((xs - eye.cx) ** 2 + (ys - eye.cy) ** 2) / R

    # Retina: orange-red, vignetted, unevenly lit, with a low-frequency choroidal texture.
    base = np.array([rng.uniform(0.72, 0.95), rng.uniform(0.28, 0.45), rng.uniform(0.08, 0.2)], np.float32)
    base *= rng.uniform(0.75, 1.1)
    vignette = 1.0 - rng.uniform(0.25, 0.55) * np.minimum(dist, 1.0) ** 2
    tilt = 1.0 + rng.uniform(-0.15, 0.15) * (xs - eye.cx) / R + rng.uniform(-0.15, 0.15) * (ys - eye.cy) / R
    texture = Image.fromarray((rng.random((12, 12)) * 255).astype(np.uint8)).resize((W, H), Image.Resampling.BICUBIC)
    texture = 0.96 + (0.08 / 255.0) * np.asarray(texture, np.float32)
    shade = vignette * tilt * texture

    # Macula: darker, computed only in its neighbourhood.
    sy, sx = _box(eye.macula_x, eye.macula_y, 0.45 * R, H, W)
    md2 = ((xs[:, sx] - eye.macula_x) ** 2 + (ys[sy] - eye.macula_y) ** 2) / (0.13 * R) ** 2
    shade[sy, sx] *= 1.0 - rng.uniform(0.2, 0.4) * np.exp(-0.5 * md2)
    img = shade[..., None] * base

    # Vessels: veins darker and wider than arteries, both from the disc.
    veins = _grow_vessels(rng, eye, width0=max(2.0, 0.022 * R), angle_jitter=0.15)
    arteries = _grow_vessels(rng, eye, width0=max(1.5, 0.016 * R), angle_jitter=0.15)
    layers, counts = _draw_lesions(lesion_rng, eye, plan, veins)
    _draw_polylines(ImageDraw.Draw(layers["vessel"]), veins)
    artery_layer = Image.new("L", (W, H), 0)
    _draw_polylines(ImageDraw.Draw(artery_layer), arteries)
    vein_alpha = _alpha(layers["vessel"], 0.8)
    img = _darken(img, _alpha(artery_layer, 0.8), 0.5, (0.35, 0.65, 0.55))
    img = _darken(img, vein_alpha, 0.75, (0.55, 0.8, 0.6))

    # Optic disc: bright yellow with a paler cup over the vessel roots, computed only around the disc.
    sy, sx = _box(eye.disc_x, eye.disc_y, 1.6 * eye.disc_r, H, W)
    dd = np.sqrt((xs[:, sx] - eye.disc_x) ** 2 + (ys[sy] - eye.disc_y) ** 2) / eye.disc_r
    disc_alpha = (1.0 / (1.0 + np.exp(np.minimum((dd - 1.0) / 0.08, 50.0))))[..., None]
    disc_colour = np.array([1.0, rng.uniform(0.8, 0.92), rng.uniform(0.45, 0.65)], np.float32) * rng.uniform(0.85, 1.0)
    patch = img[sy, sx]
    patch = _tint(patch, disc_alpha, 0.9, tuple(disc_colour))
    cup_alpha = np.exp(-0.5 * (dd / rng.uniform(0.35, 0.55)) ** 2)[..., None]
    patch = _tint(patch, cup_alpha, 0.6, (1.0, 0.97, 0.85))
    if vein_alpha is not None:  # vessel roots stay visible on the disc rim
        patch = _darken(patch, disc_alpha * vein_alpha[sy, sx], 0.5, (0.5, 0.8, 0.7))
    img[sy, sx] = patch

    # Lesions: dark red (microaneurysms, haemorrhages), yellow (exudates), white fluffy (cotton wool).
    img = _darken(img, _alpha(layers["red"], 0.7), 1.0, (0.55, 0.8, 0.75))
    img = _tint(img, _alpha(layers["yellow"], 0.7), 0.9, (1.0, 0.9, 0.45))
    img = _tint(img, _alpha(layers["white"], 0.025 * R), 0.6, (0.95, 0.9, 0.8))
    img = _darken(img, _alpha(layers["preretinal"], 1.5), 0.85, (0.6, 0.9, 0.85))

    # Camera: gamma, per-channel gain, a soft black field-of-view border, noise, JPEG compression.
    img = np.clip(img, 0, 1) ** rng.uniform(0.8, 1.25)
    img *= rng.uniform(0.9, 1.1, 3).astype(np.float32)
    fov = np.clip((1.0 - dist) / 0.01, 0.0, 1.0)
    img *= fov[..., None]
    img += rng.uniform(0.005, 0.02) * rng.standard_normal(img.shape, dtype=np.float32)
    rgb = (np.clip(img, 0, 1) * 255).astype(np.uint8)

    pil = Image.fromarray(rgb)
    if rng.random() < 0.3:
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))  # slight defocus
    if rng.random() < 0.8:
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=int(rng.integers(70, 96)))
        pil = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return np.asarray(pil), counts


def generate_fundus(rng: np.random.Generator, grade: int | None = None, size: int | None = None) -> SyntheticFundus:
    """One synthetic fundus photograph; `grade` None draws a grade uniformly, `size` is the width in px."""
    if grade is None:
        grade = int(rng.integers(0, 5))
    if not 0 <= grade <= 4:
        raise ValueError(f"grade must be 0..4, got {grade}")
    size = int(rng.integers(384, 769)) if size is None else int(size)
    # The eye and camera draw from one stream and the lesions from another, so the same seed renders the
    # same eye at every grade and only the lesions differ.
    scene_rng, lesion_rng = rng.spawn(2)
    eye = _make_eye(scene_rng, size)
    plan = _plan_lesions(lesion_rng, grade)
    rgb, counts = _render(scene_rng, lesion_rng, eye, plan)
    drawn_grade = icdr_grade(counts)
    if drawn_grade != grade:
        # Lesion placement can come up short (e.g. a quadrant mostly outside a cropped frame); the label
        # is always what was drawn, never what was asked for.
        grade = drawn_grade
    return SyntheticFundus(rgb=rgb, grade=grade, lesions=counts)


def split_item(split: str, index: int) -> SyntheticFundus:
    """Image `index` of a split; grades cycle 0..4 so every split is balanced across grades."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_SEEDS)}")
    rng = np.random.default_rng(np.random.SeedSequence([SPLIT_SEEDS[split], index]))
    item = generate_fundus(rng, grade=index % 5)
    item.split, item.index = split, index
    return item


def iter_split(split: str, n: int, start: int = 0) -> Iterator[SyntheticFundus]:
    for index in range(start, start + n):
        yield split_item(split, index)


def make_split(name: str, n: int) -> list[SyntheticFundus]:
    return list(iter_split(name, n))


def _write(out: Path, split: str, n: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    columns = ["file", "grade", "grade_name", *[f.name for f in LesionCounts.__dataclass_fields__.values()]]
    with open(out / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for item in iter_split(split, n):
            name = f"{split}_{item.index:05d}.png"
            Image.fromarray(item.rgb).save(out / name)
            counts = asdict(item.lesions)
            counts["haemorrhages_per_quadrant"] = "/".join(map(str, item.lesions.haemorrhages_per_quadrant))
            writer.writerow([name, item.grade, GRADE_NAMES[item.grade], *counts.values()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for PNGs and labels.csv")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--split", choices=sorted(SPLIT_SEEDS), default="train")
    args = parser.parse_args()
    _write(args.out, args.split, args.n)


if __name__ == "__main__":
    main()
