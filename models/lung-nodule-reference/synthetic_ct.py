"""Synthetic chest CT in Hounsfield units, with known nodules, written as real DICOM CT series.

A phantom is an analytic description in patient coordinates (DICOM LPS, millimetres: x to the patient's
left, y to the back, z to the head): body with a fat layer, ribs, spine, aorta and heart; two lungs;
airways; two branching vessel trees per lung (tubular structures: the classic false-positive trap for a
nodule detector); and solid or part-solid nodules of 3–30 mm at known centres. `render` samples it on any
voxel grid — any spacing, slice thickness and orientation, the whole chest or a small region — with
partial-volume edges, slice-thickness averaging, in-plane blur and correlated noise, so training patches,
test series and evaluation scans all come from one code path.

Reusable by other CT tasks: `make_phantom` + `Grid` + `render` give the HU volume, the lung mask and the
geometry before anything is written; `write_ct_series` / `write_enhanced_ct` write DICOM.

    scan = simulate_scan(np.random.default_rng(0), matrix=256, pixel_spacing=0.7, slice_spacing=2.5)
    paths = write_ct_series(scan.hu, scan.grid, out_dir, instance_order="descending", shuffle_names=True)
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

# --- geometry -------------------------------------------------------------------------------------

ORIENTATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    # name: (row direction = IOP[0:3], column direction = IOP[3:6]); normal = row x column
    "HFS": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),    # normal +z: slice index grows towards the head
    "FFS": ((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),   # normal -z: slice index grows towards the feet
    "HFP": ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
    "FFP": ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
}


@dataclass(frozen=True)
class Grid:
    """A voxel grid in patient space. Arrays on it are indexed [slice, row, column]."""

    shape: tuple[int, int, int]  # slices, rows, columns
    origin: tuple[float, float, float]  # LPS mm of voxel (0, 0, 0): ImagePositionPatient of slice 0
    row_dir: tuple[float, float, float]  # direction of increasing column index (IOP[0:3])
    col_dir: tuple[float, float, float]  # direction of increasing row index (IOP[3:6])
    spacing: tuple[float, float, float]  # (column, row, slice) spacing in mm
    slice_thickness: float | None = None

    @property
    def normal(self) -> np.ndarray:
        return np.cross(np.asarray(self.row_dir), np.asarray(self.col_dir))

    @property
    def affine(self) -> np.ndarray:
        """(column, row, slice, 1) → (x, y, z, 1) LPS mm."""
        affine = np.eye(4)
        affine[:3, 0] = np.asarray(self.row_dir) * self.spacing[0]
        affine[:3, 1] = np.asarray(self.col_dir) * self.spacing[1]
        affine[:3, 2] = self.normal * self.spacing[2]
        affine[:3, 3] = self.origin
        return affine

    def slice_position(self, index: int) -> np.ndarray:
        return np.asarray(self.origin) + index * self.spacing[2] * self.normal

    def to_voxel(self, points_mm: np.ndarray) -> np.ndarray:
        """LPS mm (..., 3) → fractional (column, row, slice)."""
        inverse = np.linalg.inv(self.affine)
        points = np.asarray(points_mm, dtype=np.float64)
        return points @ inverse[:3, :3].T + inverse[:3, 3]

    def to_patient(self, voxels: np.ndarray) -> np.ndarray:
        affine = self.affine
        return np.asarray(voxels, dtype=np.float64) @ affine[:3, :3].T + affine[:3, 3]

    def sub_grid(self, start: Sequence[int], stop: Sequence[int]) -> Grid:
        """The part [start, stop) of this grid, indices (slice, row, column)."""
        s0, r0, c0 = start
        origin = self.to_patient(np.array([c0, r0, s0], dtype=np.float64))
        shape = tuple(int(b - a) for a, b in zip(start, stop, strict=True))
        return replace(self, shape=shape, origin=tuple(float(v) for v in origin))


def grid_around(centre_mm: Sequence[float], matrix: int, pixel_spacing: float, n_slices: int,
                slice_spacing: float, orientation: str = "HFS", rotation_deg: float = 0.0,
                slice_thickness: float | None = None, rows: int | None = None) -> Grid:
    """A grid of `matrix` columns (and `rows` rows, default square) centred on a patient point."""
    row_dir, col_dir = (np.asarray(v, dtype=np.float64) for v in ORIENTATIONS[orientation])
    if rotation_deg:
        # In-plane rotation about the normal: oblique in-plane axes, still no gantry tilt.
        normal = np.cross(row_dir, col_dir)
        angle = math.radians(rotation_deg)
        row_dir, col_dir = (_rotate(row_dir, normal, angle), _rotate(col_dir, normal, angle))
    rows = rows or matrix
    normal = np.cross(row_dir, col_dir)
    centre = np.asarray(centre_mm, dtype=np.float64)
    origin = (centre - (matrix - 1) / 2 * pixel_spacing * row_dir - (rows - 1) / 2 * pixel_spacing * col_dir
              - (n_slices - 1) / 2 * slice_spacing * normal)
    return Grid(
        shape=(n_slices, rows, matrix),
        origin=tuple(float(v) for v in origin),
        row_dir=tuple(float(v) for v in row_dir),
        col_dir=tuple(float(v) for v in col_dir),
        spacing=(pixel_spacing, pixel_spacing, slice_spacing),
        slice_thickness=slice_thickness if slice_thickness is not None else slice_spacing,
    )


def _rotate(vector: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    return (vector * math.cos(angle) + np.cross(axis, vector) * math.sin(angle)
            + axis * float(axis @ vector) * (1 - math.cos(angle)))


# --- the phantom ----------------------------------------------------------------------------------

HU_AIR = -1000.0
HU_LUNG = -860.0
HU_FAT = -100.0
HU_SOFT = 40.0
HU_BLOOD = 45.0
HU_BONE = 650.0


@dataclass(frozen=True)
class Nodule:
    centre_mm: tuple[float, float, float]
    diameter_mm: float
    kind: str  # "solid" or "part-solid"
    hu: float
    core_fraction: float = 1.0  # part-solid: diameter of the solid core over the whole diameter
    ggo_hu: float = -500.0
    axes: tuple[float, float, float] = (1.0, 1.0, 1.0)  # slight ellipsoid, product 1 keeps the volume

    @property
    def radius_mm(self) -> float:
        return self.diameter_mm / 2


@dataclass(frozen=True)
class Tube:
    start: np.ndarray
    end: np.ndarray
    radius: float
    hu: float
    wall: float = 0.0  # airway wall thickness (lumen is air)


@dataclass
class Phantom:
    body_axes: tuple[float, float]  # semi-axes x, y of the body ellipse
    fat_mm: float
    lungs: list[tuple[np.ndarray, np.ndarray]]  # (centre, semi-axes) of each lung superellipsoid
    lung_power: float
    heart: tuple[np.ndarray, np.ndarray]
    spine: tuple[np.ndarray, float]
    aorta: tuple[np.ndarray, float]
    rib_period: float
    rib_phase: float
    vessels: list[Tube] = field(default_factory=list)
    airways: list[Tube] = field(default_factory=list)
    nodules: list[Nodule] = field(default_factory=list)
    texture: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # (k, [kx, ky, kz, phase])

    @property
    def lung_extent_z(self) -> tuple[float, float]:
        return (min(c[2] - a[2] for c, a in self.lungs), max(c[2] + a[2] for c, a in self.lungs))

    def lung_value(self, x, y, z, margin: float = 0.0):
        """< 1 inside a lung (shrunk by `margin` mm), excluding the heart."""
        best = None
        for centre, axes in self.lungs:
            value = _superellipsoid(x, y, z, centre, axes - margin, self.lung_power)
            best = value if best is None else np.minimum(best, value)
        heart = _superellipsoid(x, y, z, self.heart[0], self.heart[1] + margin, 2.0)
        return np.where(heart < 1.0, 2.0, best)

    def inside_lung(self, point: Sequence[float], margin: float = 0.0) -> bool:
        x, y, z = (np.asarray(v, dtype=np.float64) for v in point)
        return bool(self.lung_value(x, y, z, margin) < 1.0)


def _superellipsoid(x, y, z, centre, axes, power):
    if power == 2.0:
        return ((x - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2 + ((z - centre[2]) / axes[2]) ** 2
    return (np.abs((x - centre[0]) / axes[0]) ** power + np.abs((y - centre[1]) / axes[1]) ** power
            + ((z - centre[2]) / axes[2]) ** 2)


def make_phantom(rng: np.random.Generator, n_nodules: int | None = None, nodule_diameters: Sequence[float] | None = None,
                 part_solid_fraction: float = 0.3, min_diameter: float = 3.0, max_diameter: float = 30.0,
                 nodule_region: Grid | None = None) -> Phantom:
    """A random chest. Nodule diameters are log-uniform in [min, max] unless given; `nodule_region`
    keeps nodules inside a grid (e.g. a targeted field of view) with a margin of one radius + 5 mm."""
    ax, ay = rng.uniform(140, 175), rng.uniform(95, 125)
    lung_z = rng.uniform(-20, 20)
    lungs = []
    for side in (-1, 1):  # -1: patient right (x < 0 in LPS), +1: left
        axes = np.array([rng.uniform(0.30, 0.36) * ax, rng.uniform(0.70, 0.80) * ay, rng.uniform(105, 130)])
        centre = np.array([side * rng.uniform(0.42, 0.48) * ax, rng.uniform(-0.05, 0.1) * ay,
                           lung_z + rng.uniform(-5, 5)])
        lungs.append((centre, axes))
    heart = (np.array([rng.uniform(5, 25), -0.25 * ay, lung_z - rng.uniform(30, 50)]),
             np.array([rng.uniform(50, 65), rng.uniform(45, 55), rng.uniform(55, 70)]))
    phantom = Phantom(
        body_axes=(ax, ay),
        fat_mm=rng.uniform(6, 20),
        lungs=lungs,
        lung_power=2.0,
        heart=heart,
        spine=(np.array([0.0, 0.72 * ay]), rng.uniform(16, 20)),
        aorta=(np.array([rng.uniform(15, 25), 0.45 * ay]), rng.uniform(10, 13)),
        rib_period=rng.uniform(22, 28),
        rib_phase=rng.uniform(0, 2 * math.pi),
        texture=np.column_stack([rng.normal(0, 0.08, (2, 3)), rng.uniform(0, 2 * math.pi, 2)]),
    )
    _grow_trees(phantom, rng)
    _place_nodules(phantom, rng, n_nodules, nodule_diameters, part_solid_fraction, min_diameter, max_diameter,
                   nodule_region)
    return phantom


def _grow_trees(phantom: Phantom, rng: np.random.Generator) -> None:
    ax, ay = phantom.body_axes
    top_z = phantom.lung_extent_z[1] + 30
    carina = np.array([0.0, 0.1 * ay, phantom.lungs[0][0][2] + 0.35 * phantom.lungs[0][1][2]])
    phantom.airways.append(Tube(np.array([0.0, 0.1 * ay, top_z]), carina, 9.0, HU_AIR, wall=2.0))
    for centre, axes in phantom.lungs:
        side = math.copysign(1.0, centre[0])
        hilum = np.array([centre[0] - side * 0.55 * axes[0], centre[1] + 0.05 * axes[1], centre[2] + 0.1 * axes[2]])
        phantom.airways.append(Tube(carina, hilum, 6.0, HU_AIR, wall=1.5))
        _branch(phantom, rng, hilum, np.array([side, 0.0, 0.3]), 30.0, 5.0, 0, 3, airway=True)
        for offset in (np.array([0.0, -8.0, 4.0]), np.array([0.0, 8.0, -6.0])):
            start = hilum + offset
            for direction in (np.array([side, 0.2, 0.9]), np.array([side, -0.3, -0.8]), np.array([side, 0.4, -0.1])):
                direction = direction + rng.normal(0, 0.2, 3)
                _branch(phantom, rng, start, direction, rng.uniform(25, 40), rng.uniform(4.0, 5.5), 0, 6,
                        airway=False)


def _branch(phantom: Phantom, rng: np.random.Generator, start: np.ndarray, direction: np.ndarray, length: float,
            radius: float, depth: int, max_depth: int, airway: bool) -> None:
    if depth > max_depth or radius < 0.6:
        return
    direction = direction / np.linalg.norm(direction)
    end = None
    for _ in range(4):
        candidate = start + direction * length
        if phantom.inside_lung(candidate, margin=radius + 2):
            end = candidate
            break
        length *= 0.6
        if length < 4:
            break
    if end is None:
        return
    if airway:
        phantom.airways.append(Tube(start, end, radius, HU_AIR, wall=max(0.6, 0.2 * radius)))
    else:
        phantom.vessels.append(Tube(start, end, radius, HU_BLOOD + rng.normal(0, 8)))
    n_children = 2 if rng.random() < 0.85 else 3
    for _ in range(n_children):
        child = direction + rng.normal(0, 0.55, 3)
        _branch(phantom, rng, end, child, length * rng.uniform(0.7, 0.9), radius * rng.uniform(0.68, 0.8),
                depth + 1, max_depth, airway)


def _place_nodules(phantom: Phantom, rng: np.random.Generator, n_nodules: int | None,
                   diameters: Sequence[float] | None, part_solid_fraction: float, min_diameter: float,
                   max_diameter: float, region: Grid | None) -> None:
    if diameters is None:
        n = int(rng.integers(0, 6)) if n_nodules is None else n_nodules
        diameters = np.exp(rng.uniform(math.log(min_diameter), math.log(max_diameter), n))
    for diameter in sorted(diameters, reverse=True):
        radius = diameter / 2
        for _ in range(400):
            lung_centre, axes = phantom.lungs[int(rng.integers(0, 2))]
            point = lung_centre + rng.uniform(-1, 1, 3) * axes
            if not phantom.inside_lung(point, margin=radius + 3):
                continue
            if region is not None and not _inside_region(region, point, radius + 5):
                continue
            if any(np.linalg.norm(point - np.asarray(n.centre_mm)) < radius + n.radius_mm + 6 for n in phantom.nodules):
                continue
            break
        else:
            continue
        part_solid = rng.random() < part_solid_fraction and diameter >= 6
        stretch = rng.uniform(0.9, 1.1, 3)
        stretch /= np.prod(stretch) ** (1 / 3)
        phantom.nodules.append(Nodule(
            centre_mm=tuple(float(v) for v in point),
            diameter_mm=float(diameter),
            kind="part-solid" if part_solid else "solid",
            hu=float(rng.uniform(0, 80)),
            core_fraction=float(rng.uniform(0.35, 0.6)) if part_solid else 1.0,
            ggo_hu=float(rng.uniform(-620, -420)),
            axes=tuple(float(v) for v in stretch),
        ))


def _inside_region(grid: Grid, point: np.ndarray, margin_mm: float) -> bool:
    voxel = grid.to_voxel(point)
    limits = np.array([grid.shape[2], grid.shape[1], grid.shape[0]]) - 1
    margin = margin_mm / np.asarray(grid.spacing)
    return bool(np.all(voxel >= margin) and np.all(voxel <= limits - margin))


# --- rendering ------------------------------------------------------------------------------------


@dataclass
class Rendered:
    hu: np.ndarray  # float32 [slice, row, column]
    lung_mask: np.ndarray  # bool
    grid: Grid


def _coordinates(grid: Grid, start=(0, 0, 0), stop=None, slice_offsets: np.ndarray | None = None):
    """x, y, z (float32, broadcast to [slice, row, column]) of voxel centres in [start, stop)."""
    stop = stop or grid.shape
    s = np.arange(start[0], stop[0], dtype=np.float64)
    if slice_offsets is not None:
        s = s + slice_offsets
    r = np.arange(start[1], stop[1], dtype=np.float64)
    c = np.arange(start[2], stop[2], dtype=np.float64)
    affine = grid.affine
    out = []
    for axis in range(3):
        value = (affine[axis, 3] + affine[axis, 2] * s[:, None, None] + affine[axis, 1] * r[None, :, None]
                 + affine[axis, 0] * c[None, None, :])
        out.append(value.astype(np.float32))
    return out


def _soft(distance_outside, width):
    """Partial-volume occupancy from a signed distance (negative inside)."""
    return np.clip(0.5 - distance_outside / width, 0.0, 1.0)


def render(phantom: Phantom, grid: Grid, supersample: int | None = None) -> Rendered:
    """Noise-free HU on the grid, averaged over the slice thickness, with the lung mask."""
    thickness = grid.slice_thickness or grid.spacing[2]
    if supersample is None:
        supersample = max(1, int(math.ceil(thickness / 1.25)))
    offsets = [0.0] if supersample == 1 else list(
        (np.arange(supersample) + 0.5) / supersample * thickness / grid.spacing[2] - thickness / grid.spacing[2] / 2)
    hu = np.zeros(grid.shape, np.float32)
    lung_mask = None
    for offset in offsets:
        sample, lungs = _render_once(phantom, grid, offset)
        hu += sample
        if lung_mask is None or offset == offsets[len(offsets) // 2]:
            lung_mask = lungs
    hu /= len(offsets)
    return Rendered(hu=hu, lung_mask=lung_mask, grid=grid)


def _render_once(phantom: Phantom, grid: Grid, slice_offset: float) -> tuple[np.ndarray, np.ndarray]:
    x, y, z = _coordinates(grid, slice_offsets=np.full(1, slice_offset))
    width = float(max(min(grid.spacing[0], grid.spacing[1]), 0.5))
    ax, ay = phantom.body_axes
    radial = np.sqrt((x / ax) ** 2 + (y / ay) ** 2)  # 1 at the skin
    mean_axis = (ax + ay) / 2
    body = _soft((radial - 1) * mean_axis, width)
    hu = HU_AIR + body * (HU_SOFT - HU_AIR)
    fat = _soft((radial - 1) * mean_axis, width) * _soft(((1 - phantom.fat_mm / mean_axis) - radial) * mean_axis, width)
    hu += fat * (HU_FAT - HU_SOFT)
    rib_band = (np.sin(2 * math.pi * z / phantom.rib_period + phantom.rib_phase) > 0.55)
    ribs = (_soft(np.abs(radial - (1 - (phantom.fat_mm + 12) / mean_axis)) * mean_axis - 4.5, width) * rib_band
            * (y > -0.6 * ay))
    hu += ribs * (HU_BONE - hu)
    spine_centre, spine_radius = phantom.spine
    spine = _soft(np.hypot(x - spine_centre[0], y - spine_centre[1]) - spine_radius, width)
    hu += spine * (HU_BONE - 250 - hu)
    aorta_centre, aorta_radius = phantom.aorta
    aorta = _soft(np.hypot(x - aorta_centre[0], y - aorta_centre[1]) - aorta_radius, width)
    hu += aorta * (HU_BLOOD - hu)

    lung_value = phantom.lung_value(x, y, z)
    scale = float(np.mean([a.mean() for _, a in phantom.lungs]))
    lung = _soft((np.sqrt(np.maximum(lung_value, 0)) - 1) * scale, width).astype(np.float32)
    texture = np.zeros_like(x)
    for kx, ky, kz, phase in phantom.texture:
        texture += np.sin(kx * x + ky * y + kz * z + phase)
    hu += lung * (HU_LUNG + 12 * texture - hu)
    del texture, radial, body, fat, ribs, spine, aorta

    occupancy = np.zeros(grid.shape, np.float32)
    vessel_hu = np.full(grid.shape, HU_BLOOD, np.float32)
    for tube in phantom.vessels:
        _draw_tube(occupancy, vessel_hu, grid, tube, width, slice_offset)
    hu += occupancy * lung * (vessel_hu - hu)
    for tube in phantom.airways:
        _draw_airway(hu, grid, tube, width, slice_offset)
    for nodule in phantom.nodules:
        _draw_nodule(hu, grid, nodule, width, slice_offset)
    return hu, lung > 0.5


def _bbox(grid: Grid, low: np.ndarray, high: np.ndarray, slice_offset: float = 0.0):
    corners = np.array([[a, b, c] for a in (low[0], high[0]) for b in (low[1], high[1]) for c in (low[2], high[2])])
    voxels = grid.to_voxel(corners)
    vmin = np.floor(voxels.min(axis=0)).astype(int)
    vmax = np.ceil(voxels.max(axis=0)).astype(int) + 1
    vmin[2] = int(math.floor(voxels[:, 2].min() - slice_offset))
    vmax[2] = int(math.ceil(voxels[:, 2].max() - slice_offset)) + 1
    size = np.array([grid.shape[2], grid.shape[1], grid.shape[0]])
    vmin, vmax = np.clip(vmin, 0, size), np.clip(vmax, 0, size)
    if np.any(vmax <= vmin):
        return None
    return (int(vmin[2]), int(vmin[1]), int(vmin[0])), (int(vmax[2]), int(vmax[1]), int(vmax[0]))


def _segment_distance(x, y, z, start: np.ndarray, end: np.ndarray):
    direction = end - start
    length2 = float(direction @ direction)
    px, py, pz = x - start[0], y - start[1], z - start[2]
    t = np.clip((px * direction[0] + py * direction[1] + pz * direction[2]) / max(length2, 1e-9), 0.0, 1.0)
    dx, dy, dz = px - t * direction[0], py - t * direction[1], pz - t * direction[2]
    return np.sqrt(dx * dx + dy * dy + dz * dz)


def _draw_tube(occupancy, vessel_hu, grid, tube: Tube, width, slice_offset) -> None:
    reach = tube.radius + width * 2
    box = _bbox(grid, np.minimum(tube.start, tube.end) - reach, np.maximum(tube.start, tube.end) + reach, slice_offset)
    if box is None:
        return
    start, stop = box
    x, y, z = _coordinates(grid, start, stop, np.full(1, slice_offset))
    occ = _soft(_segment_distance(x, y, z, tube.start, tube.end) - tube.radius, width)
    region = (slice(start[0], stop[0]), slice(start[1], stop[1]), slice(start[2], stop[2]))
    larger = occ > occupancy[region]
    occupancy[region] = np.where(larger, occ, occupancy[region])
    vessel_hu[region] = np.where(larger, np.float32(tube.hu), vessel_hu[region])


def _draw_airway(hu, grid, tube: Tube, width, slice_offset) -> None:
    outer = tube.radius + tube.wall
    reach = outer + width * 2
    box = _bbox(grid, np.minimum(tube.start, tube.end) - reach, np.maximum(tube.start, tube.end) + reach, slice_offset)
    if box is None:
        return
    start, stop = box
    x, y, z = _coordinates(grid, start, stop, np.full(1, slice_offset))
    distance = _segment_distance(x, y, z, tube.start, tube.end)
    region = (slice(start[0], stop[0]), slice(start[1], stop[1]), slice(start[2], stop[2]))
    wall = _soft(distance - outer, width)
    hu[region] += wall * (HU_SOFT - 20 - hu[region])
    lumen = _soft(distance - tube.radius, width)
    hu[region] += lumen * (HU_AIR + 10 - hu[region])


def _draw_nodule(hu, grid, nodule: Nodule, width, slice_offset) -> None:
    centre = np.asarray(nodule.centre_mm)
    reach = nodule.radius_mm * 1.15 + width * 2
    box = _bbox(grid, centre - reach, centre + reach, slice_offset)
    if box is None:
        return
    start, stop = box
    x, y, z = _coordinates(grid, start, stop, np.full(1, slice_offset))
    ex, ey, ez = nodule.axes
    distance = np.sqrt(((x - centre[0]) / ex) ** 2 + ((y - centre[1]) / ey) ** 2 + ((z - centre[2]) / ez) ** 2)
    region = (slice(start[0], stop[0]), slice(start[1], stop[1]), slice(start[2], stop[2]))
    whole = _soft(distance - nodule.radius_mm, width)
    if nodule.kind == "part-solid":
        hu[region] += whole * (nodule.ggo_hu - hu[region])
        core = _soft(distance - nodule.radius_mm * nodule.core_fraction, width)
        hu[region] += core * (nodule.hu - hu[region])
    else:
        hu[region] += whole * (nodule.hu - hu[region])


def nodule_occupancy(phantom: Phantom, grid: Grid) -> np.ndarray:
    """Fraction of each voxel inside a nodule (the detector's training target), float32."""
    target = np.zeros(grid.shape, np.float32)
    width = float(min(grid.spacing))
    for nodule in phantom.nodules:
        centre = np.asarray(nodule.centre_mm)
        reach = nodule.radius_mm * 1.15 + width * 2
        box = _bbox(grid, centre - reach, centre + reach)
        if box is None:
            continue
        start, stop = box
        x, y, z = _coordinates(grid, start, stop)
        ex, ey, ez = nodule.axes
        distance = np.sqrt(((x - centre[0]) / ex) ** 2 + ((y - centre[1]) / ey) ** 2 + ((z - centre[2]) / ez) ** 2)
        region = (slice(start[0], stop[0]), slice(start[1], stop[1]), slice(start[2], stop[2]))
        target[region] = np.maximum(target[region], _soft(distance - nodule.radius_mm, width))
    return target


def acquire(rendered: Rendered, rng: np.random.Generator, noise_hu: float | None = None,
            blur_mm: float | None = None) -> np.ndarray:
    """Scanner effects on a rendered volume: in-plane blur and in-plane correlated noise; HU float32."""
    from scipy.ndimage import gaussian_filter

    grid = rendered.grid
    blur_mm = rng.uniform(0.4, 0.9) if blur_mm is None else blur_mm
    sigma = (0.0, blur_mm / grid.spacing[1], blur_mm / grid.spacing[0])
    hu = gaussian_filter(rendered.hu, sigma=sigma, mode="nearest") if blur_mm > 0 else rendered.hu.copy()
    noise_hu = rng.uniform(8, 35) if noise_hu is None else noise_hu
    if noise_hu > 0:
        noise = rng.standard_normal(grid.shape, dtype=np.float32)
        noise = gaussian_filter(noise, sigma=(0.0, 0.7, 0.7), mode="wrap")
        noise *= noise_hu / max(float(noise.std()), 1e-6)
        hu += noise
    np.clip(hu, -1024, 3071, out=hu)
    return hu


# --- whole scans ----------------------------------------------------------------------------------


@dataclass
class SyntheticScan:
    hu: np.ndarray  # float32 [slice, row, column], with noise
    grid: Grid
    lung_mask: np.ndarray
    phantom: Phantom

    @property
    def nodules(self) -> list[Nodule]:
        return self.phantom.nodules


def simulate_scan(rng: np.random.Generator, matrix: int = 256, pixel_spacing: float | None = None,
                  slice_spacing: float | None = None, slice_thickness: float | None = None,
                  orientation: str | None = None, rotation_deg: float | None = None,
                  z_extent_mm: float | None = None, n_nodules: int | None = None,
                  nodule_diameters: Sequence[float] | None = None, noise_hu: float | None = None,
                  min_diameter: float = 3.0, max_diameter: float = 30.0, rows: int | None = None) -> SyntheticScan:
    """One scan with random acquisition unless given. With a matrix too small for the whole chest the field
    of view is a targeted reconstruction over one lung; nodules are placed inside it."""
    pixel_spacing = rng.uniform(0.5, 1.0) if pixel_spacing is None else pixel_spacing
    if slice_spacing is None:
        slice_spacing = float(rng.choice([0.625, 1.0, 1.25, 2.0, 2.5, 3.0, 5.0]))
    slice_thickness = slice_spacing if slice_thickness is None else slice_thickness
    orientation = orientation or str(rng.choice(list(ORIENTATIONS), p=[0.55, 0.25, 0.1, 0.1]))
    rotation_deg = (rng.uniform(-15, 15) if rng.random() < 0.2 else 0.0) if rotation_deg is None else rotation_deg
    z_extent_mm = rng.uniform(90, 160) if z_extent_mm is None else z_extent_mm
    n_slices = max(2, int(round(z_extent_mm / slice_spacing)))
    # Anatomy first (without nodules), so the field of view can be placed on it.
    anatomy = make_phantom(rng, n_nodules=0)
    fov = matrix * pixel_spacing
    lung_centre, lung_axes = anatomy.lungs[int(rng.integers(0, 2))]
    if fov >= 2 * anatomy.body_axes[0] + 20:
        centre_xy = np.array([0.0, 0.0])
    else:
        centre_xy = lung_centre[:2] + rng.uniform(-0.2, 0.2, 2) * lung_axes[:2]
    z_low, z_high = lung_centre[2] - 0.8 * lung_axes[2], lung_centre[2] + 0.8 * lung_axes[2]
    half = z_extent_mm / 2
    centre_z = rng.uniform(z_low + half, z_high - half) if z_high - z_low > z_extent_mm else lung_centre[2]
    grid = grid_around((centre_xy[0], centre_xy[1], centre_z), matrix, pixel_spacing, n_slices, slice_spacing,
                       orientation, rotation_deg, slice_thickness, rows)
    _place_nodules(anatomy, rng, n_nodules, nodule_diameters, 0.3, min_diameter, max_diameter, grid)
    rendered = render(anatomy, grid)
    hu = acquire(rendered, rng, noise_hu=noise_hu)
    return SyntheticScan(hu=hu, grid=grid, lung_mask=rendered.lung_mask, phantom=anatomy)


# --- DICOM ----------------------------------------------------------------------------------------

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


@dataclass(frozen=True)
class SeriesIds:
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str

    @classmethod
    def new(cls) -> SeriesIds:
        from pydicom.uid import generate_uid

        return cls(generate_uid(), generate_uid(), generate_uid())


def to_stored(hu: np.ndarray, slope: float = 1.0, intercept: float = -1024.0, signed: bool = False) -> np.ndarray:
    stored = np.round((hu - intercept) / slope)
    if signed:
        return np.clip(stored, -32768, 32767).astype(np.int16)
    return np.clip(stored, 0, 65535).astype(np.uint16)


def _base_dataset(ids: SeriesIds, sop_class: str, modality: str, rows: int, columns: int, signed: bool,
                  description: str, series_number: int):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    sop_instance_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance_uid
    today = datetime.date.today().strftime("%Y%m%d")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.Modality = modality
    ds.Manufacturer = "medimg synthetic phantom"
    ds.PatientName = "Phantom^Synthetic"
    ds.PatientID = "SYNTHETIC"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = ids.study_instance_uid
    ds.SeriesInstanceUID = ids.series_instance_uid
    ds.FrameOfReferenceUID = ids.frame_of_reference_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    return ds


def write_ct_series(hu: np.ndarray, grid: Grid, out_dir: Path, *, ids: SeriesIds | None = None,
                    instance_order: str = "ascending", shuffle_names: bool = False,
                    rng: np.random.Generator | None = None, rescale: str = "unsigned",
                    description: str = "Synthetic chest CT", series_number: int = 2, modality: str = "CT",
                    positions: Sequence[Sequence[float]] | None = None,
                    orientations: Sequence[Sequence[float]] | None = None,
                    slice_indices: Sequence[int] | None = None) -> list[Path]:
    """One single-frame instance per slice, Explicit VR Little Endian.

    instance_order: "ascending" numbers instances along the slice normal, "descending" against it (with an
    HFS grid that puts instance 1 at the head, as most scanners do). shuffle_names: file names are random,
    so neither name nor InstanceNumber order follows the geometry. rescale: "unsigned" (intercept -1024),
    "signed" (intercept 0), or "varied" (slope and intercept change from slice to slice). positions /
    orientations override the grid's per slice (for tilted or mixed-orientation test series).
    """
    ids = ids or SeriesIds.new()
    rng = rng or np.random.default_rng(0)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_slices = hu.shape[0]
    indices = list(range(n_slices)) if slice_indices is None else list(slice_indices)
    numbers = {index: rank + 1 for rank, index in enumerate(indices if instance_order == "ascending"
                                                            else indices[::-1])}
    names = [f"{i:05d}" for i in range(len(indices))]
    if shuffle_names:
        names = [f"{rng.integers(0, 2**40):010x}" for _ in indices]
    sop_class = CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE
    paths = []
    for name, index in zip(names, indices, strict=True):
        if rescale == "varied":
            slope, intercept, signed = float(rng.choice([1.0, 0.5, 2.0])), float(rng.integers(-1200, 0)), True
        elif rescale == "signed":
            slope, intercept, signed = 1.0, 0.0, True
        else:
            slope, intercept, signed = 1.0, -1024.0, False
        ds = _base_dataset(ids, sop_class, modality, hu.shape[1], hu.shape[2], signed, description, series_number)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = numbers[index]
        position = grid.slice_position(index) if positions is None else np.asarray(positions[index])
        orientation = (list(grid.row_dir) + list(grid.col_dir)) if orientations is None else list(orientations[index])
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.PixelSpacing = [f"{grid.spacing[1]:.6g}", f"{grid.spacing[0]:.6g}"]
        ds.SliceThickness = f"{grid.slice_thickness or grid.spacing[2]:.6g}"
        ds.SpacingBetweenSlices = f"{grid.spacing[2]:.6g}"
        ds.SliceLocation = f"{float(position[2]):.4f}"
        ds.KVP = "120"
        ds.ConvolutionKernel = "LUNG"
        if modality == "CT":
            ds.RescaleSlope = f"{slope:g}"
            ds.RescaleIntercept = f"{intercept:g}"
            ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = "-600", "1500"
        ds.PixelData = to_stored(hu[index], slope, intercept, signed).tobytes()
        path = out_dir / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_enhanced_ct(hu: np.ndarray, grid: Grid, path: Path, *, ids: SeriesIds | None = None,
                      frame_order: Sequence[int] | None = None, description: str = "Synthetic enhanced CT") -> Path:
    """One Enhanced CT Image Storage instance holding every slice as a frame, geometry per frame.
    `frame_order` lists which slice goes into each frame (default: along the normal)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    ids = ids or SeriesIds.new()
    order = list(range(hu.shape[0])) if frame_order is None else list(frame_order)
    ds = _base_dataset(ids, ENHANCED_CT_IMAGE_STORAGE, "CT", hu.shape[1], hu.shape[2], False, description, 3)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.InstanceNumber = 1
    ds.NumberOfFrames = len(order)
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [f"{grid.spacing[1]:.6g}", f"{grid.spacing[0]:.6g}"]
    measures.SliceThickness = f"{grid.slice_thickness or grid.spacing[2]:.6g}"
    shared.PixelMeasuresSequence = DicomSequence([measures])
    plane = Dataset()
    plane.ImageOrientationPatient = [f"{v:.6f}" for v in list(grid.row_dir) + list(grid.col_dir)]
    shared.PlaneOrientationSequence = DicomSequence([plane])
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = "1", "-1024", "HU"
    shared.PixelValueTransformationSequence = DicomSequence([transform])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for number, index in enumerate(order, start=1):
        item = Dataset()
        position = Dataset()
        position.ImagePositionPatient = [f"{v:.4f}" for v in grid.slice_position(index)]
        item.PlanePositionSequence = DicomSequence([position])
        content = Dataset()
        content.InStackPositionNumber = index + 1
        content.DimensionIndexValues = [1, index + 1]
        item.FrameContentSequence = DicomSequence([content])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.PixelData = np.ascontiguousarray(to_stored(hu[order])).tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
