"""External validation CT: an independently designed chest phantom, never used for training or model selection.

`synthetic_ct.py` (the training generator) builds a whole-chest phantom from straight tube segments,
superellipsoid lungs and a sinusoidal texture. This generator is written apart from it, with its own anatomy,
intensity model and noise, so that the card can say how the model does on scans it was not tuned to:

* **anatomy**: a targeted field of view over one lung whose costal surface (an ellipse that drifts and swells
  from slice to slice) crosses the image, with a chest wall of fat, muscle and ribs outside it; vessel trees
  grow from hilar roots outside the field as *branching, tapering splines* (scipy's B-splines through
  random-walk control points), so vessels curve, cross the slices at every angle and appear end-on as dots;
* **nodules** of three kinds, labelled by how they were placed: *solitary* (clear of vessels and wall),
  *juxtavascular* (surface touching a vessel of ≥ 1 mm radius), *juxtapleural* (surface touching the costal
  surface); lobulated (the radius modulated by smoothed noise on the sphere), solid;
* **intensity**: parenchyma density with a gravity-dependent gradient and Perlin-like texture (band-pass
  filtered Gaussian noise at two scales), blood, muscle, fat and bone of varied density;
* **acquisition**: slice spacing 0.6–2.5 mm with slab thickness 1–1.5 x spacing (capped at 2.5 mm),
  rendered on a finer slice grid and slab-averaged; pixel spacing 0.55–0.95 mm; a point spread of 0.5–1.2 mm;
  noise of 10–60 HU whose texture follows a "soft" or "sharp" reconstruction kernel (a sharp kernel also
  edge-enhances the image).

Geometry and DICOM writing are the training generator's (`grid_around`, `write_ct_series`): they are the
scanner's conventions, not the anatomy, and the service must read them the same either way.
Scan `i` of the set is a pure function of `EXTERNAL_SEED + i`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import interpolate, ndimage

from workers.evaluation.model_folders import model_folder_module

sc = model_folder_module("lung-nodule-reference", "synthetic_ct")  # the training generator beside this file

# Disjoint from the training generator's split seeds (10 000 000, 20 000 000, 30 000 000 + i).
EXTERNAL_SEED = 71_000_000
SLICE_SPACINGS_MM = (0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5)
FINE_STEP_MM = 0.5  # the rendering's slice step before slab averaging
KINDS = ("solitary", "juxtavascular", "juxtapleural")


@dataclass(frozen=True)
class ExternalNodule:
    """A nodule in patient LPS mm; `diameter_mm` is its volume-equivalent sphere's diameter."""

    centre_mm: tuple[float, float, float]
    diameter_mm: float
    kind: str

    @property
    def radius_mm(self) -> float:
        return self.diameter_mm / 2


@dataclass
class ExternalScan:
    hu: np.ndarray  # float32 [slice, row, column]
    grid: sc.Grid
    nodules: list[ExternalNodule]
    vessel_rich: bool  # grown with the dense tree count (at least DENSE_TREES trees)
    vessel_fraction: float  # fraction of the lung occupied by vessels
    kernel: str
    noise_hu: float
    facts: dict = field(default_factory=dict)


DENSE_TREES = 8


@dataclass
class _Lung:
    """The costal surface: an ellipse in-plane (local mm), centre and semi-axes varying linearly with z."""

    centre: np.ndarray  # (x, y) at z = 0
    drift: np.ndarray  # (dx, dy) per mm of z
    axes: np.ndarray  # (ax, ay) at z = 0
    swell: float  # relative change of the axes per mm of z

    def frame(self, z):
        z = np.asarray(z, dtype=np.float64)
        centre = self.centre + np.multiply.outer(z, self.drift)
        scale = 1 + self.swell * z
        return centre, self.axes * scale[..., None]

    def level(self, x, y, z):
        """< 1 inside the lung, 1 on the costal surface (normalised elliptic radius)."""
        centre, axes = self.frame(z)
        return np.sqrt(((x - centre[..., 0]) / axes[..., 0]) ** 2 + ((y - centre[..., 1]) / axes[..., 1]) ** 2)

    def depth_mm(self, point) -> float:
        """Approximate distance of a point inside the lung to the costal surface."""
        centre, axes = self.frame(point[2])
        return float((1 - self.level(point[0], point[1], point[2])) * min(axes))


def _spline_branch(rng, start, direction, length, points_per_mm=1.0):
    """Centreline samples of one curved branch: a B-spline through a random walk of control points."""
    n_control = max(4, int(length / 12) + 2)
    controls = [np.asarray(start, dtype=np.float64)]
    heading = direction / np.linalg.norm(direction)
    step = length / (n_control - 1)
    for _ in range(n_control - 1):
        heading = heading + rng.normal(0, 0.45, 3)
        heading /= np.linalg.norm(heading)
        controls.append(controls[-1] + step * heading)
    controls = np.array(controls)
    tck, _ = interpolate.splprep(controls.T, k=3, s=0)
    samples = interpolate.splev(np.linspace(0, 1, max(8, int(length * points_per_mm * 2))), tck)
    return np.stack(samples, axis=1), heading


def _grow_tree(rng, root, direction, radius, depth, out):
    """Append (point, radius) centreline samples; each branch tapers along itself and splits in two."""
    length = rng.uniform(25, 50) * (radius / 2.5) ** 0.5 + 10
    points, heading = _spline_branch(rng, root, direction, length)
    end_radius = radius * rng.uniform(0.75, 0.88)
    radii = np.linspace(radius, end_radius, len(points))
    out.append(np.column_stack([points, radii]))
    if depth == 0 or end_radius < 0.45:
        return
    for _ in range(2):
        # Daughters leave at 25–70°, each thinner by Murray's law with a random split of the flow.
        axis = np.cross(heading, rng.normal(size=3))
        axis /= np.linalg.norm(axis)
        angle = math.radians(rng.uniform(25, 70))
        daughter = heading * math.cos(angle) + np.cross(axis, heading) * math.sin(angle)
        share = rng.uniform(0.35, 0.65)
        _grow_tree(rng, points[-1], daughter, end_radius * share ** (1 / 3), depth - 1, out)


def _perlin_like(rng, shape, sigmas_vox, weights):
    """Band-limited texture: Gaussian noise smoothed at a few scales, each normalised, weighted and summed."""
    total = np.zeros(shape, np.float32)
    for sigma, weight in zip(sigmas_vox, weights, strict=True):
        layer = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
        total += weight * layer / max(float(layer.std()), 1e-6)
    return total


def _lobulated_distance(rng, radius):
    """A function (dx, dy, dz) → normalised radial distance (1 on the surface) of a lobulated nodule."""
    n_lobes = int(rng.integers(2, 6))
    lobes = rng.normal(size=(n_lobes, 3))
    lobes /= np.linalg.norm(lobes, axis=1, keepdims=True)
    amplitudes = rng.uniform(0.03, 0.12, n_lobes)

    def distance(dx, dy, dz):
        r = np.sqrt(dx * dx + dy * dy + dz * dz) + 1e-9
        bump = sum(a * np.clip((dx * u[0] + dy * u[1] + dz * u[2]) / r, 0, None) ** 3
                   for a, u in zip(amplitudes, lobes, strict=True))
        # The mean bump over the sphere (about a/8 per lobe) is taken out so the volume stays near the sphere's.
        return r / (radius * (1 + bump - amplitudes.sum() / 8))

    return distance


def simulate_external_scan(rng: np.random.Generator, matrix: int = 256) -> ExternalScan:
    pixel = float(rng.uniform(0.55, 0.95))
    spacing = float(rng.choice(SLICE_SPACINGS_MM))
    thickness = float(min(2.5, spacing * rng.uniform(1.0, 1.5)))
    extent_z = float(rng.uniform(55, 85))
    n_slices = max(8, int(round(extent_z / spacing)))
    fov = matrix * pixel
    orientation = str(rng.choice(["HFS", "FFS"]))
    grid = sc.grid_around((0.0, 0.0, 0.0), matrix, pixel, n_slices, spacing, orientation, 0.0, thickness)

    # Local frame: x along columns, y along rows, z along slices, mm from voxel (0, 0, 0) of slice 0.
    sub = max(1, round(spacing / FINE_STEP_MM))
    fine = spacing / sub
    half_slab = thickness / 2
    pad = math.ceil(half_slab / fine)
    z_fine = (np.arange(-pad, (n_slices - 1) * sub + pad + 1)) * fine
    xs = np.arange(matrix) * pixel
    shape = (len(z_fine), matrix, matrix)

    # Costal surface on one side of the field: the lung centre off-field so the wall crosses the image.
    side = rng.choice([-1.0, 1.0])
    axes = np.array([rng.uniform(0.75, 1.1), rng.uniform(0.8, 1.2)]) * fov * 0.75
    centre = np.array([fov / 2 - side * (axes[0] - fov * rng.uniform(0.32, 0.42)), fov / 2 + rng.uniform(-0.1, 0.1) * fov])
    lung = _Lung(centre=centre, drift=rng.uniform(-0.15, 0.15, 2), axes=axes, swell=rng.uniform(-0.002, 0.002))
    zz = z_fine[:, None, None]
    level = lung.level(xs[None, None, :], xs[None, :, None], zz)
    inside = level < 1.0

    # Vessel centrelines: trees rooted on the hilar (medial) side, just outside or at the edge of the field.
    n_trees = int(rng.integers(3, 13))
    samples: list[np.ndarray] = []
    for _ in range(n_trees):
        # The costal wall is on the `side` half of the field, the hilum beyond the other edge.
        root = np.array([fov / 2 - side * fov * rng.uniform(0.4, 0.6), rng.uniform(0.05, 0.95) * fov,
                         rng.uniform(0.0, 1.0) * z_fine[-1]])
        direction = np.array([side * rng.uniform(0.3, 1.0), rng.normal(0, 0.6), rng.normal(0, 0.9)])
        _grow_tree(rng, root, direction, rng.uniform(2.5, 4.5), int(rng.integers(5, 7)), samples)
    centreline = np.concatenate(samples)

    # Vessels as a distance field: each fine voxel's distance to the nearest centreline sample, minus that
    # sample's radius, with a soft edge of about a fifth of a millimetre.
    seeds = np.ones(shape, bool)
    radius_at = np.zeros(shape, np.float32)
    idx = np.round(np.column_stack([centreline[:, 2] / fine + pad, centreline[:, 1] / pixel,
                                    centreline[:, 0] / pixel])).astype(int)
    keep = np.all((idx >= 0) & (idx < np.array(shape)), axis=1)
    idx, radii = idx[keep], centreline[keep, 3]
    order = np.argsort(radii)  # the thickest sample wins a shared voxel
    seeds[tuple(idx[order].T)] = False
    radius_at[tuple(idx[order].T)] = radii[order]
    if (~seeds).any():
        distance, nearest = ndimage.distance_transform_edt(seeds, sampling=(fine, pixel, pixel), return_indices=True)
        vessel = np.clip(0.5 - (distance - radius_at[tuple(nearest)]) / 0.4, 0, 1).astype(np.float32)
        del nearest
    else:
        vessel = np.zeros(shape, np.float32)
    vessel *= inside

    # Intensities.
    base = rng.uniform(-890, -820)
    gradient = rng.uniform(0, 70)  # denser towards the dependent (posterior, high-row) side
    texture = _perlin_like(rng, shape, (2.0 / pixel, 6.0 / pixel), (rng.uniform(8, 22), rng.uniform(6, 18)))
    parenchyma = base + gradient * (xs[None, :, None] / fov) + texture
    blood = rng.uniform(25, 70)
    wall_fat, muscle = rng.uniform(-120, -70), rng.uniform(35, 65)
    depth_out = (level - 1.0) * min(axes)  # mm outside the costal surface, roughly
    wall = np.where(depth_out < rng.uniform(4, 9), muscle, wall_fat).astype(np.float32)
    # Ribs: tubes in the wall at a few heights, cortex brighter than marrow.
    rib_period = rng.uniform(18, 26)
    rib_phase = rng.uniform(0, rib_period)
    rib_z = np.abs(((zz + rib_phase) % rib_period) - rib_period / 2)
    rib_d = np.sqrt((np.clip(depth_out, 0, None) - 8) ** 2 + (rib_z * 0.9) ** 2)
    bone = rng.uniform(500, 900)
    wall = np.where(rib_d < 5, np.where(rib_d > 3.8, bone, bone * 0.45), wall)
    surface = np.clip(0.5 - depth_out / 0.6, 0, 1)  # soft costal surface
    lung_hu = parenchyma * (1 - vessel) + blood * vessel
    hu = (surface * lung_hu + (1 - surface) * wall).astype(np.float32)
    del parenchyma, texture, wall, rib_d, rib_z, depth_out

    nodule_local = _place_external_nodules(rng, lung, centreline, fov, z_fine, pad)
    for (local, radius, _kind), nodule_hu in zip(nodule_local, rng.uniform(-20, 90, len(nodule_local)), strict=True):
        distance = _lobulated_distance(rng, radius)
        lo = np.floor([(local[2] - radius * 1.3) / fine + pad, (local[1] - radius * 1.3) / pixel,
                       (local[0] - radius * 1.3) / pixel]).astype(int)
        hi = np.ceil([(local[2] + radius * 1.3) / fine + pad, (local[1] + radius * 1.3) / pixel,
                      (local[0] + radius * 1.3) / pixel]).astype(int) + 1
        lo, hi = np.maximum(lo, 0), np.minimum(hi, shape)
        if np.any(hi <= lo):
            continue
        k, j, i = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        d = distance(i * pixel - local[0], j * pixel - local[1], (k - pad) * fine - local[2])
        occupancy = np.clip(0.5 - (d - 1) * radius / 0.35, 0, 1)
        block = hu[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        # A nodule replaces the lung it lies in, never the wall (a juxtapleural nodule abuts it).
        block[:] = np.maximum(block, block * (1 - occupancy) + nodule_hu * occupancy)

    # Acquisition: slab average over the thickness, sample the slice centres, blur, kernel-shaped noise.
    window = max(1, int(round(thickness / fine)))
    slab = ndimage.uniform_filter1d(hu, window, axis=0, mode="nearest")
    hu = slab[pad + np.arange(n_slices) * sub]
    blur = rng.uniform(0.5, 1.2)
    hu = ndimage.gaussian_filter(hu, (0, blur / pixel, blur / pixel))
    kernel = str(rng.choice(["soft", "sharp"]))
    noise_hu = float(rng.uniform(10, 60))
    noise = rng.standard_normal(hu.shape).astype(np.float32)
    if kernel == "soft":
        noise = ndimage.gaussian_filter(noise, (0, 1.1, 1.1))
    else:
        # A sharp kernel: high-pass noise (fine grain) and edge enhancement of the image.
        noise = noise - ndimage.gaussian_filter(noise, (0, 1.5, 1.5))
        hu = hu + 0.6 * (hu - ndimage.gaussian_filter(hu, (0, 1.2 / pixel, 1.2 / pixel)))
    hu = hu + noise * (noise_hu / max(float(noise.std()), 1e-6))
    hu = np.clip(hu, -1024, 3071).astype(np.float32)

    lung_voxels = max(int(inside.sum()), 1)
    return ExternalScan(
        hu=hu, grid=grid, nodules=[_to_patient(grid, local, radius, kind, pixel, spacing)
                                   for local, radius, kind in nodule_local],
        vessel_rich=n_trees >= DENSE_TREES, vessel_fraction=float((vessel > 0.5).sum() / lung_voxels),
        kernel=kernel, noise_hu=noise_hu,
        facts={"pixel_mm": pixel, "slice_mm": spacing, "thickness_mm": thickness, "trees": n_trees},
    ) if nodule_local else simulate_external_scan(rng, matrix)


def _to_patient(grid: sc.Grid, local, radius, kind, pixel, spacing) -> ExternalNodule:
    voxel = np.array([local[0] / pixel, local[1] / pixel, local[2] / spacing])
    return ExternalNodule(tuple(float(v) for v in grid.to_patient(voxel)), float(2 * radius), kind)


def _place_external_nodules(rng, lung: _Lung, centreline, fov, z_fine, pad):
    """One to three nodules of each kind, 4–24 mm (log-uniform), kept inside the field and apart."""
    z_low, z_high = 0.0, z_fine[-1 - pad]
    placed: list[tuple[np.ndarray, float, str]] = []

    def clear(point, radius):
        in_field = (radius + 2 < point[0] < fov - radius - 2 and radius + 2 < point[1] < fov - radius - 2
                    and z_low + radius < point[2] < z_high - radius)
        return in_field and all(np.linalg.norm(point - p) > radius + r + 6 for p, r, _ in placed)

    def vessel_gap(point, radius):
        """Gap between the nodule's surface and the nearest vessel surface."""
        gaps = np.linalg.norm(centreline[:, :3] - point, axis=1) - centreline[:, 3]
        return float(gaps.min()) - radius

    thick = centreline[centreline[:, 3] >= 1.0]
    for kind in KINDS:
        wanted = int(rng.integers(1, 4))
        for _ in range(400):
            if sum(k == kind for *_, k in placed) >= wanted:
                break
            radius = float(np.exp(rng.uniform(np.log(2.0), np.log(12.0))))
            if kind == "juxtavascular":
                if not len(thick):
                    break
                anchor = thick[int(rng.integers(len(thick)))]
                offset = rng.normal(size=3)
                offset /= np.linalg.norm(offset)
                # Surfaces meet with a small overlap: the nodule abuts the vessel.
                point = anchor[:3] + offset * (anchor[3] + radius * rng.uniform(0.8, 0.95))
                ok = lung.depth_mm(point) > radius + 3
            elif kind == "juxtapleural":
                point = np.array([rng.uniform(0, fov), rng.uniform(0, fov), rng.uniform(z_low, z_high)])
                centre, axes = lung.frame(point[2])
                direction = (point[:2] - centre) / axes
                direction /= np.linalg.norm(direction) + 1e-9
                surface = centre + direction * axes
                inward = -(point[:2] - centre) / (np.linalg.norm(point[:2] - centre) + 1e-9)
                point = np.array([*(surface + inward * radius * rng.uniform(0.75, 0.92)), point[2]])
                ok = vessel_gap(point, radius) > 2
            else:
                point = np.array([rng.uniform(0, fov), rng.uniform(0, fov), rng.uniform(z_low, z_high)])
                ok = lung.depth_mm(point) > radius + 4 and vessel_gap(point, radius) > 3
            if ok and clear(point, radius):
                placed.append((point, radius, kind))
    return placed


def external_scan(index: int, matrix: int = 256, seed: int = EXTERNAL_SEED) -> ExternalScan:
    """Scan `index` of the set whose seeds start at `seed` (each model version has its own, evaluate.HELD_OUT)."""
    return simulate_external_scan(np.random.default_rng(seed + index), matrix)
