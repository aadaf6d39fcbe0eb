"""External validation fundus photographs: an independently designed generator, never used for training or selection.

`synthetic_fundus.py` trains, calibrates and tests the DR model. This generator is written apart from it, so
the card can say how the model does on photographs it was not tuned to. It shares only the ICDR definitions
(`LesionCounts`, `icdr_grade`, the 4-2-1 thresholds), which are the task's, not the rendering's:

* **vessels**: two arcades (superior and inferior temporal) leave the disc as curved splines, nasal vessels
  fan out, each branching by a random walk; rendered as a *distance field* to the centreline samples
  (scipy's Euclidean distance transform) with a cylindrical absorption profile and a central light reflex,
  veins darker and wider than arteries;
* **colour**: a two-pigment absorption model (melanin, haemoglobin: `exp(-absorbance)` per channel) with a
  tigroid choroidal pattern in the red channel, an off-centre illumination falloff (vignetting) and, in
  young eyes, a retinal sheen ring around the macula;
* **lesions**: microaneurysms as Gaussian dark-red dots beside vessels; haemorrhages as *dot-blot* blobs
  (thresholded smoothed noise) or *flame* ellipses oriented along the nerve-fibre direction (radial from the
  disc); hard exudates as circinate rings of waxy specks; cotton-wool spots as soft white patches; venous
  beading as a periodic swelling of the veins of chosen quadrants; neovascularisation as tangles of thin
  loops at the disc or on the arcades; preretinal haemorrhage as a boat shape (flat top, round bottom);
* **camera**: a field of view that may be cut by the frame top and bottom, a soft field edge, chromatic blur
  (blue blurrier than red), signal-dependent (shot) plus read noise, then JPEG (quality 55–92) or PNG.

The grade is `icdr_grade` of what was painted inside the field of view, never the grade that was asked for.
Quadrants are split at the field's centre: superior/inferior by row, nasal/temporal by the disc's side.
Image `i` is a pure function of `[EXTERNAL_SEED, i]`; the seed is disjoint from the training generator's split
seeds (20 240 101 / 20 240 202 / 20 240 303), train.py's torch seed (1234) and the tests' (0–104).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import interpolate, ndimage

from workers.evaluation.model_folders import model_folder_module

sf = model_folder_module("dr-grading-reference", "synthetic_fundus")  # the ICDR definitions beside this file

EXTERNAL_SEED = 61_771_203

# Absorbance per unit pigment in R, G, B: melanin absorbs blue most, haemoglobin green and blue.
MELANIN = np.array([0.35, 0.75, 1.25])
HAEMOGLOBIN = np.array([0.10, 1.30, 1.70])


@dataclass
class _Vessel:
    points: np.ndarray  # (n, 2) x, y in px
    radii: np.ndarray  # (n,) px
    vein: bool


@dataclass
class ExternalFundus:
    rgb: np.ndarray  # HxWx3 uint8
    grade: int
    lesions: object  # synthetic_fundus.LesionCounts of what was painted
    index: int
    encoding: str


def _spline(rng, start, heading, length, step, bend):
    """A smooth curve from `start`: a random walk of headings through a cubic spline, sampled every `step` px."""
    n_ctrl = 6
    headings = heading + np.cumsum(rng.normal(0, bend, n_ctrl))
    seg = length / (n_ctrl - 1)
    ctrl = [np.asarray(start, float)]
    for h in headings[1:]:
        ctrl.append(ctrl[-1] + seg * np.array([math.cos(h), math.sin(h)]))
    ctrl = np.array(ctrl)
    t = np.linspace(0, 1, len(ctrl))
    samples = np.linspace(0, 1, max(int(length / step), 4))
    return np.column_stack([interpolate.CubicSpline(t, ctrl[:, k])(samples) for k in (0, 1)])


def _vessel_tree(rng, start, heading, length, radius, vein, depth, out: list[_Vessel]) -> None:
    points = _spline(rng, start, heading, length, 1.5, 0.25)
    taper = np.linspace(radius, radius * 0.7, len(points))
    out.append(_Vessel(points, taper, vein))
    if depth == 0 or radius < 0.9:
        return
    for _ in range(int(rng.integers(1, 3))):
        at = int(rng.uniform(0.3, 0.85) * len(points))
        direction = points[min(at + 1, len(points) - 1)] - points[at]
        h = math.atan2(direction[1], direction[0]) + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
        _vessel_tree(rng, points[at], h, length * rng.uniform(0.4, 0.65), radius * rng.uniform(0.6, 0.8), vein,
                     depth - 1, out)


def _vessels(rng, disc, temporal_sign, r_fov) -> list[_Vessel]:
    """Arcades towards the macula's side (temporal) above and below, smaller vessels fanning nasally."""
    out: list[_Vessel] = []
    base = r_fov * rng.uniform(0.011, 0.015)
    for vein in (True, False):
        radius = base * (1.35 if vein else 1.0)
        for up in (-1, 1):
            heading = math.atan2(up * rng.uniform(0.8, 1.3), temporal_sign * 1.0)
            _vessel_tree(rng, disc, heading, r_fov * rng.uniform(1.1, 1.5), radius, vein, 3, out)
        for _ in range(int(rng.integers(2, 4))):
            heading = math.atan2(rng.uniform(-1, 1), -temporal_sign * 1.0)
            _vessel_tree(rng, disc, heading, r_fov * rng.uniform(0.6, 0.9), radius * 0.7, vein, 2, out)
    return out


def _tube_field(shape, vessels: list[_Vessel], beading=None):
    """Per pixel: absorption 0..1 of the nearest vessel (a cylinder's chord length) and whether it is a vein."""
    seeds = np.ones(shape, bool)
    radius_at = np.zeros(shape, np.float32)
    vein_at = np.zeros(shape, bool)
    for vessel in sorted(vessels, key=lambda v: float(v.radii.mean())):  # the wider vessel wins a shared pixel
        radii = vessel.radii if beading is None else beading(vessel)
        ij = np.round(vessel.points[:, ::-1]).astype(int)
        keep = np.all((ij >= 0) & (ij < np.array(shape)), axis=1)
        seeds[tuple(ij[keep].T)] = False
        radius_at[tuple(ij[keep].T)] = radii[keep]
        vein_at[tuple(ij[keep].T)] = vessel.vein
    if seeds.all():
        return np.zeros(shape, np.float32), vein_at, np.zeros(shape, np.float32)
    distance, nearest = ndimage.distance_transform_edt(seeds, return_indices=True)
    r = radius_at[tuple(nearest)]
    rel = np.clip(distance / np.maximum(r, 0.5), 0, 1.2)
    chord = np.sqrt(np.clip(1 - rel ** 2, 0, 1)).astype(np.float32)
    reflex = np.exp(-(distance / np.maximum(0.3 * r, 0.3)) ** 2) * (r > 1.6)  # light reflex on wide vessels
    return chord, vein_at[tuple(nearest)], reflex.astype(np.float32)


def _quadrant(x, y, centre, temporal_sign) -> int:
    """0 superior-temporal, 1 superior-nasal, 2 inferior-temporal, 3 inferior-nasal."""
    superior = y < centre[1]
    temporal = (x - centre[0]) * temporal_sign > 0
    return (0 if temporal else 1) if superior else (2 if temporal else 3)


def _random_point(rng, centre, r_fov, quadrant=None, temporal_sign=1.0, max_r=0.9):
    for _ in range(200):
        rho, theta = r_fov * max_r * math.sqrt(rng.uniform(0.02, 1)), rng.uniform(0, 2 * math.pi)
        x, y = centre[0] + rho * math.cos(theta), centre[1] + rho * math.sin(theta)
        if quadrant is None or _quadrant(x, y, centre, temporal_sign) == quadrant:
            return x, y
    return None


def _plan(rng, grade: int) -> dict:
    """How many of each lesion to paint for the requested grade (the label is recomputed from the painting)."""
    plan = {"ma": 0, "haem": [0, 0, 0, 0], "exudate_rings": 0, "cws": 0, "beading": [], "nv": 0, "preretinal": 0}
    if grade >= 1:
        plan["ma"] = int(rng.integers(2, 14))
    if grade == 2:
        kinds = rng.permutation(["haem", "exudate", "cws"])[: int(rng.integers(1, 4))]
        if "haem" in kinds:
            plan["haem"] = [int(rng.integers(0, 6)) for _ in range(4)]
            plan["haem"][int(rng.integers(0, 4))] += 1
        plan["exudate_rings"] = int(rng.integers(1, 3)) if "exudate" in kinds else 0
        plan["cws"] = int(rng.integers(1, 4)) if "cws" in kinds else 0
    if grade == 3:
        if rng.random() < 0.6:
            plan["haem"] = [int(rng.integers(22, 32)) for _ in range(4)]
        else:
            plan["haem"] = [int(rng.integers(2, 10)) for _ in range(4)]
            plan["beading"] = sorted(rng.choice(4, size=int(rng.integers(2, 4)), replace=False).tolist())
        plan["exudate_rings"] = int(rng.integers(0, 2))
    if grade == 4:
        plan["haem"] = [int(rng.integers(0, 12)) for _ in range(4)]
        plan["nv"] = int(rng.integers(1, 3))
        plan["preretinal"] = int(rng.random() < 0.4)
    return plan


def _blob_mask(rng, shape, cx, cy, radius):
    """A dot-blot haemorrhage: smoothed noise thresholded inside a disc, its largest piece."""
    half = int(math.ceil(radius * 1.6)) + 2
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    field = ndimage.gaussian_filter(rng.standard_normal(yy.shape), max(radius / 3, 0.8))
    field /= max(float(field.std()), 1e-9)
    mask = (np.hypot(xx, yy) / radius + 0.35 * field) < 1.0
    return _place(shape, mask, cx, cy)


def _place(shape, patch, cx, cy):
    """`patch` (odd square) centred on (cx, cy) in a full-size mask, cut at the edges."""
    out = np.zeros(shape, bool)
    half = patch.shape[0] // 2
    x0, y0 = int(round(cx)) - half, int(round(cy)) - half
    ys = slice(max(y0, 0), min(y0 + patch.shape[0], shape[0]))
    xs = slice(max(x0, 0), min(x0 + patch.shape[1], shape[1]))
    if ys.stop <= ys.start or xs.stop <= xs.start:
        return out
    out[ys, xs] = patch[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
    return out


def _ellipse_mask(shape, cx, cy, a, b, angle):
    half = int(math.ceil(max(a, b))) + 2
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(float)
    c, s = math.cos(angle), math.sin(angle)
    u, v = xx * c + yy * s, -xx * s + yy * c
    return _place(shape, (u / a) ** 2 + (v / b) ** 2 < 1, cx, cy)


def external_item(index: int, asked_grade: int | None = None) -> ExternalFundus:
    """Image `index` of the external set; requested grades cycle 0..4 so the set is balanced. The eye, the
    lesions and the camera draw from separate streams, so `asked_grade` renders the same eye and camera with
    other lesions (the tests compare a lesion-free rendering with a diseased one)."""
    rng = np.random.default_rng([EXTERNAL_SEED, index])
    scene, lesion_rng, camera = rng.spawn(3)
    asked = index % 5 if asked_grade is None else asked_grade

    width = int(scene.integers(480, 721))
    height = int(width * scene.uniform(0.78, 1.0))  # a wide frame cuts the field at top and bottom
    r_fov = width * scene.uniform(0.44, 0.49)
    centre = np.array([width / 2 + scene.uniform(-0.02, 0.02) * width,
                       height / 2 + scene.uniform(-0.02, 0.02) * height])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    rho = np.hypot(xx - centre[0], yy - centre[1]) / r_fov
    fov = rho < 1.0

    temporal_sign = float(scene.choice([-1.0, 1.0]))  # the macula's side; the disc lies on the other
    disc = centre + np.array([-temporal_sign * r_fov * scene.uniform(0.3, 0.42), scene.uniform(-0.06, 0.06) * r_fov])
    macula = centre + np.array([temporal_sign * r_fov * scene.uniform(0.05, 0.15), scene.uniform(-0.05, 0.05) * r_fov])
    disc_r = r_fov * scene.uniform(0.085, 0.115)

    # Pigments per pixel: melanin (eye's tone, darker at the macula), haemoglobin (choroid, tigroid pattern).
    melanin = scene.uniform(0.4, 1.6) + 0.5 * np.exp(-(np.hypot(xx - macula[0], yy - macula[1]) / (0.18 * r_fov)) ** 2)
    tigroid = ndimage.gaussian_filter(scene.standard_normal((height, width)), (width / 160, width / 90))
    tigroid /= max(float(tigroid.std()), 1e-9)
    haemoglobin = scene.uniform(0.5, 0.9) + scene.uniform(0.02, 0.12) * tigroid
    fovea = np.exp(-(np.hypot(xx - macula[0], yy - macula[1]) / (0.04 * r_fov)) ** 2)
    melanin = melanin + 0.6 * fovea

    vessels = _vessels(scene, disc, temporal_sign, r_fov)
    plan = _plan(lesion_rng, asked)
    beaded_quadrants = set(plan["beading"])

    def beading(vessel: _Vessel) -> np.ndarray:
        if not vessel.vein or not beaded_quadrants or vessel.radii.mean() < 1.6:
            return vessel.radii
        quadrants = np.array([_quadrant(x, y, centre, temporal_sign) for x, y in vessel.points])
        swell = 1 + 0.9 * np.sin(np.arange(len(vessel.points)) * 1.5 / max(vessel.radii.mean() * 1.8, 2)) ** 8
        return np.where(np.isin(quadrants, list(beaded_quadrants)), vessel.radii * swell, vessel.radii)

    chord, vein, reflex = _tube_field((height, width), vessels, beading)
    # Beading counts only in a quadrant where a beaded vein was actually painted inside the field.
    beaded_painted = set()
    for vessel in vessels:
        if vessel.vein and vessel.radii.mean() >= 1.6:
            for x, y in vessel.points[:: 4]:
                q = _quadrant(x, y, centre, temporal_sign)
                if q in beaded_quadrants and 0 <= int(y) < height and 0 <= int(x) < width and fov[int(y), int(x)]:
                    beaded_painted.add(q)
    haemoglobin = haemoglobin + chord * np.where(vein, 2.2, 1.4)

    red_lesion = np.zeros((height, width), np.float32)  # extra haemoglobin
    pale_lesion = np.zeros((height, width), np.float32)  # whiteness (cotton wool)
    waxy = np.zeros((height, width), np.float32)  # yellow lipid (exudates)
    vessel_pixels = np.argwhere((chord > 0.5) & fov & (rho < 0.85))

    n_ma = 0
    for _ in range(plan["ma"]):
        if not len(vessel_pixels):
            break
        y, x = vessel_pixels[int(lesion_rng.integers(len(vessel_pixels)))] + lesion_rng.normal(0, 6, 2)
        r = lesion_rng.uniform(1.0, 2.2) * width / 600
        if not (0 <= int(y) < height and 0 <= int(x) < width and fov[int(y), int(x)]):
            continue
        red_lesion += 1.6 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * r ** 2)).astype(np.float32)
        n_ma += 1

    haem_counts = [0, 0, 0, 0]
    for quadrant, wanted in enumerate(plan["haem"]):
        for _ in range(wanted):
            point = _random_point(lesion_rng, centre, r_fov, quadrant, temporal_sign)
            if point is None:
                continue
            x, y = point
            if not (0 <= int(y) < height and 0 <= int(x) < width and fov[int(y), int(x)]):
                continue
            if lesion_rng.random() < 0.5:
                mask = _blob_mask(lesion_rng, (height, width), x, y, lesion_rng.uniform(3, 8) * width / 600)
            else:  # flame: along the nerve fibres, radial from the disc
                angle = math.atan2(y - disc[1], x - disc[0])
                mask = _ellipse_mask((height, width), x, y, lesion_rng.uniform(5, 12) * width / 600,
                                     lesion_rng.uniform(1.5, 3) * width / 600, angle)
            if mask.any():
                red_lesion[mask] += lesion_rng.uniform(1.0, 1.8)
                haem_counts[quadrant] += 1

    n_rings = 0
    for _ in range(plan["exudate_rings"]):
        point = _random_point(lesion_rng, macula, r_fov * 0.5)
        if point is None:
            continue
        rx, ry, ring_r = *point, lesion_rng.uniform(8, 25) * width / 600
        painted = False
        for t in lesion_rng.uniform(0, 2 * math.pi, int(lesion_rng.integers(6, 16))):
            x, y = rx + ring_r * math.cos(t), ry + ring_r * math.sin(t)
            if 0 <= int(y) < height and 0 <= int(x) < width and fov[int(y), int(x)]:
                r = lesion_rng.uniform(1.0, 2.5) * width / 600
                waxy += (np.hypot(xx - x, yy - y) < r).astype(np.float32)
                painted = True
        n_rings += painted

    n_cws = 0
    for _ in range(plan["cws"]):
        point = _random_point(lesion_rng, disc, r_fov * 0.45)
        if point is None or not (0 <= int(point[1]) < height and 0 <= int(point[0]) < width
                                 and fov[int(point[1]), int(point[0])]):
            continue
        mask = _blob_mask(lesion_rng, (height, width), *point, lesion_rng.uniform(7, 14) * width / 600)
        pale_lesion += ndimage.gaussian_filter(mask.astype(np.float32), 2.5)
        n_cws += 1

    n_nv = 0
    for k in range(plan["nv"]):
        if k == 0 or lesion_rng.random() < 0.5:
            x0, y0 = disc + lesion_rng.normal(0, disc_r * 0.5, 2)  # NVD
        else:  # NVE on an arcade
            vessel = vessels[int(lesion_rng.integers(len(vessels)))]
            x0, y0 = vessel.points[int(lesion_rng.uniform(0.3, 0.8) * len(vessel.points))]
        loops = []
        for _ in range(int(lesion_rng.integers(5, 10))):
            r = lesion_rng.uniform(4, 10) * width / 600
            cx, cy = x0 + lesion_rng.normal(0, 8), y0 + lesion_rng.normal(0, 8)
            t = np.linspace(0, 2 * math.pi * lesion_rng.uniform(0.7, 1.0), 40) + lesion_rng.uniform(0, 6.3)
            wobble = 1 + 0.25 * np.sin(3 * t + lesion_rng.uniform(0, 6.3))
            loops.append(_Vessel(np.column_stack([cx + r * wobble * np.cos(t), cy + r * wobble * np.sin(t)]),
                                 np.full(40, 0.8 * width / 600), False))
        loop_chord, _, _ = _tube_field((height, width), loops)
        if (loop_chord[fov] > 0.3).any():
            haemoglobin = haemoglobin + 1.6 * loop_chord
            n_nv += 1

    n_preretinal = 0
    for _ in range(plan["preretinal"]):
        point = _random_point(lesion_rng, centre, r_fov, max_r=0.6)
        if point is None:
            continue
        x, y = point
        a = lesion_rng.uniform(20, 40) * width / 600
        boat = (np.hypot((xx - x) / a, (yy - y) / (0.7 * a)) < 1) & (yy > y - 0.1 * a)  # fluid level on top
        boat &= fov
        if boat.any():
            red_lesion[boat] += 2.5
            n_preretinal += 1

    lesions = sf.LesionCounts(
        microaneurysms=n_ma, haemorrhages_per_quadrant=tuple(haem_counts), hard_exudates=n_rings,
        cotton_wool_spots=n_cws, venous_beading_quadrants=len(beaded_painted), neovascular_tufts=n_nv,
        preretinal_haemorrhages=n_preretinal)

    # Colour: transmitted light through the pigments, then lesions' own reflectance.
    absorbance = melanin[..., None] * MELANIN + (haemoglobin + red_lesion)[..., None] * HAEMOGLOBIN
    rgb = np.exp(-absorbance) * np.array([1.0, 0.95, 0.9])
    disc_glow = np.exp(-(np.hypot(xx - disc[0], yy - disc[1]) / disc_r) ** 6)
    cup = np.exp(-(np.hypot(xx - disc[0], yy - disc[1]) / (disc_r * scene.uniform(0.3, 0.55))) ** 4)
    disc_colour = np.array([0.95, 0.75, 0.45]) * (1 - 0.4 * chord[..., None])  # vessels cross the disc
    rgb = rgb * (1 - disc_glow[..., None]) + disc_glow[..., None] * disc_colour
    rgb = rgb + cup[..., None] * np.array([0.05, 0.12, 0.12])
    rgb = rgb * (1 - np.clip(waxy, 0, 1)[..., None]) + np.clip(waxy, 0, 1)[..., None] * np.array([0.95, 0.85, 0.35])
    pale = np.clip(pale_lesion, 0, 0.85)[..., None]
    rgb = rgb * (1 - pale) + pale * np.array([0.92, 0.88, 0.8])
    rgb = rgb + 0.12 * reflex[..., None]
    if scene.random() < 0.5:  # a young eye's sheen around the macula
        ring = np.exp(-((np.hypot(xx - macula[0], yy - macula[1]) / r_fov - 0.25) / 0.04) ** 2)
        rgb = rgb + 0.05 * ring[..., None]

    # Illumination: brightest off-centre, falling towards the field edge; a soft field stop.
    light = centre + scene.normal(0, 0.1, 2) * r_fov
    falloff = 1 / (1 + (np.hypot(xx - light[0], yy - light[1]) / (r_fov * scene.uniform(0.9, 1.3))) ** 4)
    edge = np.clip((1.0 - rho) / 0.02, 0, 1)
    rgb = rgb * (falloff * edge)[..., None] * scene.uniform(0.9, 1.3)

    # Camera: chromatic blur, shot and read noise, 8-bit, JPEG or PNG.
    rgb = np.stack([ndimage.gaussian_filter(rgb[..., c], s) for c, s in enumerate((0.6, 0.9, 1.6))], axis=-1)
    photons = camera.uniform(200, 800)
    rgb = camera.poisson(np.clip(rgb, 0, None) * photons) / photons + camera.normal(0, 0.006, rgb.shape)
    image = Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8))
    encoding = "jpeg" if camera.random() < 0.7 else "png"
    if encoding == "jpeg":
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(camera.integers(55, 93)))
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return ExternalFundus(np.asarray(image), sf.icdr_grade(lesions), lesions, index, encoding)
