"""External validation chest CT with COVID-19-like lesions: neither the training chest nor the training lesions.

`synthetic_covid.py` paints lobulated ellipsoids over the lung-nodule phantom (`synthetic_ct.py`); the model
was trained and selected on those. This set is written apart from both, so the card can say how the model does
on chests and lesions it was not tuned to. It reuses only the grid conventions (`synthetic_ct.grid_around`),
the label coding and `Case` container of `synthetic_covid.py`, and the independently written vessel trees and
band-limited texture of `models/lung-nodule-reference/external_ct.py`:

* **chest**: a body outline of low harmonics, flatter at the back, with subcutaneous fat over muscle and a
  CT table; lungs whose in-plane outline widens from the apex down, a domed diaphragm with deeper posterior
  recesses, a mediastinum (heart shifted to the left, aorta, spine with cortex) cutting their medial side;
  ribs as oblique bands in the wall; the trachea and main bronchi as air tubes; vessel trees (branching,
  tapering B-splines of `external_ct`) grown from each hilum;
* **parenchyma**: -880 to -800 HU with a gravity gradient towards the dependent side and a two-scale texture;
* **lesions** (0-6 per scan, peripheral and basal): *crazy-paving GGO* (a patch of smoothed noise thresholded
  inside an envelope, with a polygonal network of thickened septa from a Voronoi partition), *subpleural
  bands* (curved slabs 2-5 mm thick parallel to the pleura), *consolidation with air bronchograms* (dense
  lobulated patches crossed by air tubes), and *atoll* lesions (a consolidation ring round a GGO centre);
* **label**: every painted lung voxel whose noise-free density is at least `CONSOLIDATION_HU` is
  consolidation (vessels hidden), every other painted voxel ground glass; air bronchograms inside a
  consolidation belong to it, as a reader would outline it;
* **acquisition**: 1.5-4 mm slices, 140-176 pixel matrix, a point spread, noise with an FBP-like
  high-pass texture of 15-45 HU, HFS or FFS.

Scan `i` is a pure function of `EXTERNAL_SEED + i`; the seed is disjoint from train.py's split seeds
(40, 45, 50, 80 million + i), the lung-nodule sets' (10, 20, 30, 71 million + i) and the tests'.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from workers.evaluation.model_folders import model_folder_module

covid = model_folder_module("covid-lesion-segmentation-reference", "synthetic_covid")
sc = model_folder_module("lung-nodule-reference", "synthetic_ct")
ext = model_folder_module("lung-nodule-reference", "external_ct")

EXTERNAL_SEED = 87_000_000
CONSOLIDATION_HU = -250.0  # painted density at or above which a lesion voxel is consolidation
SLICE_SPACINGS_MM = (1.5, 2.0, 3.0, 4.0)
LESION_KINDS = ("crazy-paving", "subpleural-band", "consolidation", "atoll")


def _patient_coordinates(grid):
    """x, y, z (LPS mm) of every voxel, each (slices, rows, columns)."""
    s, r, c = (np.arange(n, dtype=np.float32) for n in grid.shape)
    a = grid.affine
    return [a[i, 3] + a[i, 0] * c[None, None, :] + a[i, 1] * r[None, :, None] + a[i, 2] * s[:, None, None]
            for i in range(3)]


def _body_radius(rng):
    """Body outline in polar form: an ellipse of low harmonics, flattened posteriorly (+y in LPS)."""
    ax, ay = rng.uniform(150, 190), rng.uniform(105, 135)
    harmonics = [(k, rng.uniform(-0.03, 0.03), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4)]

    def radius(theta):
        base = ax * ay / np.sqrt((ay * np.cos(theta)) ** 2 + (ax * np.sin(theta)) ** 2)
        wobble = 1 + sum(a * np.cos(k * theta + p) for k, a, p in harmonics)
        back = 1 - 0.08 * np.clip(np.sin(theta), 0, None) ** 4  # flatter where the patient lies
        return base * wobble * back

    return radius, ax, ay


def external_case(index: int, matrix: int | None = None, slice_spacing: float | None = None):
    """Scan `index` of the set; `matrix` and `slice_spacing` override the drawn acquisition (the draws are
    still made, so the rest of the scan is drawn alike) to make small scans for the tests."""
    rng = np.random.default_rng(EXTERNAL_SEED + index)
    radius_of, body_ax, body_ay = _body_radius(rng)
    z_apex, z_base = rng.uniform(95, 120), rng.uniform(-110, -85)  # the lungs' top and the diaphragm's dome
    drawn_matrix, drawn_spacing = int(rng.choice([140, 160, 176])), float(rng.choice(SLICE_SPACINGS_MM))
    matrix, slice_spacing = matrix or drawn_matrix, slice_spacing or drawn_spacing
    pixel = (2 * body_ax + rng.uniform(20, 50)) / matrix
    n_slices = int(math.ceil((z_apex - z_base + 50) / slice_spacing)) + 1
    orientation = str(rng.choice(["HFS", "FFS"]))
    grid = sc.grid_around((0.0, rng.uniform(-5, 5), (z_apex + z_base) / 2 - 5), matrix, pixel, n_slices,
                          slice_spacing, orientation)
    x, y, z = _patient_coordinates(grid)
    theta, rho = np.arctan2(y, x), np.hypot(x, y)
    shoulder = 1 + 0.05 * np.clip((z - z_apex) / 40, 0, 1)
    body_r = radius_of(theta) * shoulder
    body = rho < body_r
    hu = np.full(grid.shape, -1000.0, np.float32)
    hu[body] = rng.uniform(-115, -85)  # subcutaneous fat
    hu[rho < body_r - rng.uniform(12, 22)] = rng.uniform(35, 60)  # muscle and soft tissue
    table_y = body_ay * 1.02 + 10
    hu[(y > table_y) & (y < table_y + 8) & (np.abs(x) < body_ax * 1.1)] = 150.0

    # Lungs: per side, an ellipse in-plane growing from the apex; a dome below; the mediastinum cut medially.
    lung_side = np.zeros(grid.shape, np.uint8)
    fill = rng.uniform(0.7, 0.8)
    for side, sign in ((1, -1.0), (2, 1.0)):  # 1 right (patient right is -x in LPS), 2 left
        cx, cy = sign * body_ax * rng.uniform(0.42, 0.5), rng.uniform(-5, 10)
        ax, ay = body_ax * rng.uniform(0.36, 0.42) * fill / 0.75, body_ay * rng.uniform(0.62, 0.72)
        grow = np.sqrt(np.clip((z_apex - z) / rng.uniform(50, 70), 0, 1))  # narrow at the apex
        level = np.hypot((x - cx) / (ax * grow + 1e-3), (y - cy) / (ay * grow + 1e-3))
        dome = z_base + rng.uniform(25, 40) * (1 - np.clip(((x - cx) / ax) ** 2 + ((y - cy - 20) / ay) ** 2, 0, 1))
        dome -= 18 * np.clip((y - cy) / ay, 0, 1) ** 2  # the posterior recess reaches lower
        inside = (level < 1) & (z > dome) & (z < z_apex)
        lung_side[inside & body & (rho < body_r - 20)] = side
    heart_c = (rng.uniform(15, 35), rng.uniform(-35, -20), z_base + rng.uniform(40, 60))
    heart_r = (rng.uniform(55, 70), rng.uniform(45, 55), rng.uniform(45, 60))
    heart = (((x - heart_c[0]) / heart_r[0]) ** 2 + ((y - heart_c[1]) / heart_r[1]) ** 2
             + ((z - heart_c[2]) / heart_r[2]) ** 2) < 1
    mediastinum = (np.abs(x - 5) < rng.uniform(22, 30) * (1 + 0.3 * (y < 0))) | heart
    spine_c = body_ay * rng.uniform(0.45, 0.55)
    spine = np.hypot(x, y - spine_c) < rng.uniform(18, 23)
    aorta = np.hypot(x - rng.uniform(18, 26), y - spine_c + 30) < rng.uniform(10, 14)
    lung_side[mediastinum | spine | aorta] = 0
    hu[heart | aorta] = rng.uniform(30, 50)
    hu[spine] = rng.uniform(180, 260)
    hu[spine & (np.hypot(x, y - spine_c) > rng.uniform(14, 17))] = rng.uniform(600, 900)  # cortex

    # Ribs: oblique bands in the wall, between the lung surface and the muscle's outside.
    rib_period, rib_phase, tilt = rng.uniform(22, 30), rng.uniform(0, 30), rng.uniform(0.15, 0.3)
    rib_z = np.abs(((z + tilt * y + rib_phase) % rib_period) - rib_period / 2)
    wall_depth = body_r - rho
    rib = (rib_z < rng.uniform(4, 6)) & (wall_depth > 10) & (wall_depth < 22) & (lung_side == 0) & body
    hu[rib] = rng.uniform(350, 650)

    lung_mask = lung_side > 0
    # Parenchyma: a gravity gradient towards the dependent side (+y supine) and a two-scale texture.
    texture = ext._perlin_like(rng, grid.shape, (2.0 / pixel, 6.0 / pixel),
                               (rng.uniform(8, 18), rng.uniform(6, 14)))
    dependent = np.clip((y + body_ay) / (2 * body_ay), 0, 1)  # 0 anterior, 1 posterior (the back, supine)
    parenchyma = rng.uniform(-880, -810) + rng.uniform(20, 70) * dependent + texture
    hu[lung_mask] = parenchyma[lung_mask]
    del texture, parenchyma

    vessel = _vessels(rng, grid, x, lung_mask, lung_side)
    blood = rng.uniform(25, 60)
    hu = np.where(lung_mask, hu * (1 - vessel) + blood * vessel, hu).astype(np.float32)

    # Airways: the trachea above the carina, a main bronchus towards each hilum (air inside a 2 mm wall).
    carina_z = z_apex - rng.uniform(45, 60)
    trachea_d = np.hypot(x, y + 5)
    trachea = (z > carina_z) & (trachea_d < rng.uniform(8, 10))
    hu[(z > carina_z) & (trachea_d < 12) & ~trachea] = 40.0
    hu[trachea] = -1000.0

    lesions = _lesion_plan(rng, x, y, z, lung_mask)
    truth = np.full(grid.shape, -1e4, np.float32)  # the densest lesion density painted at each voxel
    painted = np.zeros(grid.shape, bool)
    for lesion in lesions:
        _paint(rng, lesion, x, y, z, lung_mask, hu, truth, painted, pixel)
    labels = np.zeros(grid.shape, np.uint8)
    labels[painted & lung_mask] = covid.GGO
    labels[painted & lung_mask & (truth >= CONSOLIDATION_HU)] = covid.CONSOLIDATION

    # Acquisition: point spread, FBP-like high-pass noise.
    hu = ndimage.gaussian_filter(hu, (0.4, rng.uniform(0.5, 0.9), rng.uniform(0.5, 0.9)))
    noise = rng.standard_normal(grid.shape).astype(np.float32)
    noise = noise - ndimage.gaussian_filter(noise, (0, 2.0, 2.0)) * rng.uniform(0.5, 0.9)
    noise = ndimage.gaussian_filter(noise, (0, 0.6, 0.6))
    hu = hu + noise * (rng.uniform(15, 45) / max(float(noise.std()), 1e-6))
    hu = np.clip(hu, -1024, 3071).astype(np.float32)
    return covid.Case(hu=hu, labels=labels, lung_mask=lung_mask, lung_side=lung_side, grid=grid, lesions=lesions)


def _vessels(rng, grid, x, lung_mask, lung_side) -> np.ndarray:
    """Vessel occupancy 0..1: `external_ct`'s branching trees from each hilum, as a distance field."""
    samples: list[np.ndarray] = []
    inverse = np.linalg.inv(grid.affine)
    for side in (1, 2):
        s, r, c = np.nonzero(lung_side == side)
        if not len(s):
            continue
        voxel = np.array([c.mean(), r.mean(), s.mean()])
        hilum = grid.affine[:3, :3] @ voxel + grid.affine[:3, 3]
        hilum[0] *= 0.6  # medial
        for _ in range(int(rng.integers(4, 8))):
            direction = np.array([np.sign(hilum[0]) * rng.uniform(0.2, 1.0), rng.normal(0, 0.8),
                                  rng.normal(0, 1.0)])
            ext._grow_tree(rng, hilum, direction, rng.uniform(3.0, 5.0), int(rng.integers(4, 6)), samples)
    centreline = np.concatenate(samples)
    voxels = centreline[:, :3] @ inverse[:3, :3].T + inverse[:3, 3]  # (column, row, slice)
    idx = np.round(voxels[:, ::-1]).astype(int)
    keep = np.all((idx >= 0) & (idx < np.array(grid.shape)), axis=1)
    seeds = np.ones(grid.shape, bool)
    radius_at = np.zeros(grid.shape, np.float32)
    order = np.argsort(centreline[keep, 3])
    seeds[tuple(idx[keep][order].T)] = False
    radius_at[tuple(idx[keep][order].T)] = centreline[keep, 3][order]
    if seeds.all():
        return np.zeros(grid.shape, np.float32)
    spacing = (grid.spacing[2], grid.spacing[1], grid.spacing[0])
    distance, nearest = ndimage.distance_transform_edt(seeds, sampling=spacing, return_indices=True)
    occupancy = np.clip(0.5 - (distance - radius_at[tuple(nearest)]) / max(grid.spacing[0], 0.5), 0, 1)
    return (occupancy * lung_mask).astype(np.float32)


def _lesion_plan(rng, x, y, z, lung_mask) -> list[dict]:
    """0-6 lesions, centres in the outer third of a lung and mostly in its lower half."""
    n = int(rng.choice(7, p=[0.08, 0.14, 0.2, 0.2, 0.16, 0.12, 0.1]))
    surface_depth = ndimage.distance_transform_edt(lung_mask)
    outer = (surface_depth > 1) & (surface_depth < np.quantile(surface_depth[lung_mask], 0.5))
    candidates = np.argwhere(lung_mask & outer)
    z_mid = float(np.median(z[lung_mask]))
    plan = []
    for _ in range(n):
        for _attempt in range(50):
            s, r, c = candidates[int(rng.integers(len(candidates)))]
            if z[s, 0, 0] < z_mid or rng.random() < 0.35:
                break
        plan.append({"kind": str(rng.choice(LESION_KINDS, p=[0.4, 0.15, 0.3, 0.15])),
                     "centre": (float(x[0, 0, c]), float(y[0, r, 0]), float(z[s, 0, 0])),
                     "size_mm": float(rng.uniform(15, 45))})
    return plan


def _paint(rng, lesion, x, y, z, lung_mask, hu, truth, painted, pixel) -> None:
    """One lesion into `hu` (noise-free), its density into `truth`, its voxels into `painted`."""
    cx, cy, cz = lesion["centre"]
    size = lesion["size_mm"]
    d = np.sqrt(((x - cx) / size) ** 2 + ((y - cy) / size) ** 2 + ((z - cz) / (0.8 * size)) ** 2)
    near = (d < 1.6) & lung_mask
    if not near.any():
        return
    box = tuple(slice(i.min(), i.max() + 1) for i in np.nonzero(near))
    sub_d, sub_lung = d[box], lung_mask[box]
    field = ndimage.gaussian_filter(rng.standard_normal(sub_d.shape).astype(np.float32), 4.0 / pixel)
    field /= max(float(field.std()), 1e-6)
    kind = lesion["kind"]
    if kind == "subpleural-band":
        depth = ndimage.distance_transform_edt(sub_lung, sampling=pixel)  # mm to the pleura
        target = rng.uniform(5, 15)
        region = (np.abs(depth - target) < rng.uniform(1.0, 2.5)) & (sub_d < 1.0)
        density = np.full(sub_d.shape, rng.uniform(-320, -120), np.float32)
    else:
        region = (sub_d + 0.25 * field) < 1.0
        if kind == "crazy-paving":
            density = np.full(sub_d.shape, rng.uniform(-700, -480), np.float32)
            density += _septal_network(rng, sub_d.shape, pixel) * rng.uniform(120, 220)
            density = np.minimum(density, CONSOLIDATION_HU - 30)  # thickened septa, still ground glass
        elif kind == "consolidation":
            density = np.full(sub_d.shape, rng.uniform(-60, 50), np.float32)
            region &= sub_d < 0.8
        else:  # atoll: consolidation ring round a ground-glass centre
            density = np.where(sub_d > 0.65, rng.uniform(-80, 30), rng.uniform(-650, -500)).astype(np.float32)
    region &= sub_lung
    if not region.any():
        return
    block = hu[box]
    if kind == "consolidation":
        bronchi = _air_bronchograms(rng, sub_d.shape, pixel) & region & (sub_d < 0.7)
        density = np.where(bronchi, rng.uniform(-950, -850), density)
        block[region] = density[region]  # hides the vessels
        density = np.where(bronchi, CONSOLIDATION_HU, density)  # the bronchograms belong to the consolidation
    else:
        texture = rng.normal(0, 20, sub_d.shape).astype(np.float32)
        solid = density >= CONSOLIDATION_HU
        block[region] = np.where(solid[region], density[region] + texture[region],
                                 np.maximum(block[region], density[region] + texture[region]))
    truth[box][region] = np.maximum(truth[box][region], density[region])
    painted[box] |= region


def _septal_network(rng, shape, pixel) -> np.ndarray:
    """1 on the edges of a Voronoi partition with cells about 5-8 mm across (in plane), 0 elsewhere."""
    cell = rng.uniform(5, 8) / pixel
    seeds = np.ones(shape, bool)
    count = max(4, int(shape[1] * shape[2] / cell ** 2))
    for _ in range(count):
        seeds[int(rng.integers(shape[0])), int(rng.integers(shape[1])), int(rng.integers(shape[2]))] = False
    _, nearest = ndimage.distance_transform_edt(seeds, sampling=(3.0, 1.0, 1.0), return_indices=True)
    owner = nearest[1] * shape[2] + nearest[2]
    edges = np.zeros(shape, bool)
    edges[:, 1:, :] |= owner[:, 1:, :] != owner[:, :-1, :]
    edges[:, :, 1:] |= owner[:, :, 1:] != owner[:, :, :-1]
    return edges.astype(np.float32)


def _air_bronchograms(rng, shape, pixel) -> np.ndarray:
    """A few straight air tubes about 2 mm wide through the patch."""
    out = np.zeros(shape, bool)
    s, r, c = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    centre = np.array(shape) / 2
    for _ in range(int(rng.integers(1, 4))):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        offset = np.stack([s, r, c], axis=-1) - (centre + rng.normal(0, 2, 3))
        along = offset @ direction
        across = np.linalg.norm(offset - along[..., None] * direction, axis=-1)
        out |= across < max(1.0 / pixel, 0.6)
    return out


def iter_external(count: int):
    for index in range(count):
        yield external_case(index)
