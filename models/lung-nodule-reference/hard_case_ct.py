"""Version 2's training data: `synthetic_ct`'s chest with the hard cases version 1 missed added to it.

Version 1 trained on `synthetic_ct` alone: two hilar vessel trees per lung of straight, evenly wide segments,
nodules kept away from the lung's edge, solid or part-solid, slices of 0.625–5 mm with one blur and one noise
grain. Version 2's regions keep that chest and add, written here from the issue's list (not from the external
set's generator, which stays independent):

* extra vessel trees seeded inside the field of view, growing in every direction (so many cross the slices
  end-on and show as round dots, the classic nodule look-alike), curving, tapering segment by segment and
  branching, 0–12 trees per region (vessel-rich regions are common);
* nodules placed against a vessel (juxtavascular: the nodule's surface touches or overlaps the tube's) and
  against the pleura (juxtapleural: the centre within 0.6–1.0 radius of the lung's edge), besides solitary ones;
  solid, part-solid and pure ground-glass (−750 to −450 HU);
* acquisitions: pixels 0.45–1.0 mm, slices mostly 0.6–2.5 mm (thickness up to 1.5 times the spacing, overlapping
  reconstructions), some 3 and 5 mm; noise 5–70 HU; a soft kernel (wide blur, coarse noise grain) or a sharp
  one (little blur, edge overshoot, fine grain).

`region(seed)` gives one training region's phantom, grid and HU (the caller resamples it as the service does);
`scan(seed)` one whole 256 × 256 scan for validation (train.py's hard val split).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

import synthetic_ct as sc

NODULE_PLACEMENTS = ("solitary", "juxtavascular", "juxtapleural")
PLACEMENT_ODDS = (0.3, 0.4, 0.3)
NODULE_KINDS = ("solid", "part-solid", "ground-glass")
KIND_ODDS = (0.6, 0.25, 0.15)
KERNELS = ("soft", "sharp")


@dataclass
class HardCase:
    phantom: sc.Phantom
    grid: sc.Grid
    hu: np.ndarray  # float32 [slice, row, column], after the kernel and noise
    lung_mask: np.ndarray  # bool, the noise-free render's
    placements: list[str]  # one per phantom.nodules
    kernel: str
    noise_hu: float


# --- acquisition ----------------------------------------------------------------------------------------------


def random_acquisition(rng: np.random.Generator) -> dict:
    if rng.random() < 0.8:
        slice_spacing = float(rng.uniform(0.6, 2.5))
    else:
        slice_spacing = float(rng.choice([3.0, 5.0]))
    thickness = slice_spacing * float(rng.uniform(1.0, 1.5)) if rng.random() < 0.4 else slice_spacing
    return {
        "pixel_spacing": float(rng.uniform(0.45, 1.0)),
        "slice_spacing": slice_spacing,
        "slice_thickness": min(thickness, 5.0),
        "orientation": str(rng.choice(list(sc.ORIENTATIONS), p=[0.55, 0.25, 0.1, 0.1])),
        "rotation_deg": float(rng.uniform(-20, 20)) if rng.random() < 0.25 else 0.0,
        "kernel": str(rng.choice(KERNELS)),
        "noise_hu": float(np.exp(rng.uniform(math.log(5.0), math.log(70.0)))),
    }


def reconstruct(rendered: sc.Rendered, rng: np.random.Generator, kernel: str, noise_hu: float) -> np.ndarray:
    """The kernel's in-plane blur (and a sharp kernel's edge overshoot) and its noise grain; HU float32."""
    grid = rendered.grid
    px = grid.spacing[0]
    if kernel == "soft":
        blur_mm, grain_px, overshoot = rng.uniform(0.6, 1.2), rng.uniform(0.9, 1.4), 0.0
    else:
        blur_mm, grain_px, overshoot = rng.uniform(0.15, 0.45), rng.uniform(0.35, 0.65), rng.uniform(0.3, 0.9)
    hu = gaussian_filter(rendered.hu, sigma=(0.0, blur_mm / px, blur_mm / px), mode="nearest")
    if overshoot:
        # Unsharp masking: the ringing at edges a sharp (lung/bone) kernel leaves.
        hu += overshoot * (hu - gaussian_filter(hu, sigma=(0.0, 1.2 / px, 1.2 / px), mode="nearest"))
    noise = rng.standard_normal(grid.shape, dtype=np.float32)
    noise = gaussian_filter(noise, sigma=(0.0, grain_px, grain_px), mode="wrap")
    hu += noise * (noise_hu / max(float(noise.std()), 1e-6))
    np.clip(hu, -1024, 3071, out=hu)
    return hu


# --- vessels --------------------------------------------------------------------------------------------------


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-9)


def random_direction(rng: np.random.Generator) -> np.ndarray:
    """Uniform on the sphere: along the slice normal as often as any other way."""
    return _unit(rng.normal(0.0, 1.0, 3))


def grow_tree(phantom: sc.Phantom, rng: np.random.Generator, start: np.ndarray, direction: np.ndarray,
              radius: float, depth: int = 0, max_depth: int = 4) -> None:
    """A curving, tapering branch of short segments from `start`, forking into two or three at its end."""
    point, heading = np.asarray(start, dtype=np.float64), _unit(direction)
    hu = sc.HU_BLOOD + rng.normal(0, 10)
    for _ in range(int(rng.integers(3, 8))):
        if radius < 0.45:
            return
        heading = _unit(heading + rng.normal(0.0, 0.22, 3))
        end = point + heading * rng.uniform(3.0, 7.0)
        if not phantom.inside_lung(end, margin=radius + 1.0):
            return
        phantom.vessels.append(sc.Tube(point, end, radius, hu))
        point, radius = end, radius * rng.uniform(0.9, 0.98)
    if depth >= max_depth:
        return
    for _ in range(2 if rng.random() < 0.8 else 3):
        grow_tree(phantom, rng, point, heading + rng.normal(0.0, 0.6, 3), radius * rng.uniform(0.65, 0.85),
                  depth + 1, max_depth)


def add_trees(phantom: sc.Phantom, rng: np.random.Generator, centre: np.ndarray, reach_mm: float, n_trees: int) -> None:
    for _ in range(n_trees):
        for _ in range(50):
            seed = centre + rng.uniform(-reach_mm, reach_mm, 3)
            if phantom.inside_lung(seed, margin=6.0):
                break
        else:
            continue
        grow_tree(phantom, rng, seed, random_direction(rng), float(rng.uniform(1.2, 4.0)))


def vessel_occupancy(phantom: sc.Phantom, grid: sc.Grid) -> np.ndarray:
    """Fraction of each voxel inside a vessel tube (weights the loss where the look-alikes are), float32."""
    occupancy = np.zeros(grid.shape, np.float32)
    scratch_hu = np.zeros(grid.shape, np.float32)
    width = float(min(grid.spacing))
    for tube in phantom.vessels:
        sc._draw_tube(occupancy, scratch_hu, grid, tube, width, 0.0)
    return occupancy


# --- nodules --------------------------------------------------------------------------------------------------


def _in_view(grid: sc.Grid, point: np.ndarray, margin_mm: float) -> bool:
    return sc._inside_region(grid, point, margin_mm)


def _clear_of_others(phantom: sc.Phantom, point: np.ndarray, radius: float) -> bool:
    return all(np.linalg.norm(point - np.asarray(n.centre_mm)) >= radius + n.radius_mm + 4 for n in phantom.nodules)


def _solitary_centre(phantom, rng, grid, radius):
    for _ in range(300):
        point = grid.to_patient(rng.uniform(0, 1, 3) * (np.array(grid.shape[::-1]) - 1))
        if phantom.inside_lung(point, margin=radius + 3) and _in_view(grid, point, radius + 3):
            return point
    return None


def _juxtavascular_centre(phantom, rng, grid, radius):
    tubes = [t for t in phantom.vessels if t.radius >= 0.8 and _in_view(grid, (t.start + t.end) / 2, radius + 3)]
    for _ in range(60 if tubes else 0):
        tube = tubes[int(rng.integers(0, len(tubes)))]
        axis = _unit(tube.end - tube.start)
        across = _unit(np.cross(axis, random_direction(rng)))
        on_axis = tube.start + rng.uniform(0.2, 0.8) * (tube.end - tube.start)
        # Surface to surface from touching (1.0) to half the nodule's radius sunk into the vessel (0.5).
        point = on_axis + across * (tube.radius + radius * rng.uniform(0.5, 1.0))
        if phantom.inside_lung(point, margin=radius * 0.6) and _in_view(grid, point, radius + 3):
            return point
    return None


def _juxtapleural_centre(phantom, rng, grid, radius):
    for _ in range(300):
        lung_centre, axes = phantom.lungs[int(rng.integers(0, 2))]
        direction = random_direction(rng)
        to_edge = 1.0 / math.sqrt(float(np.sum((direction / axes) ** 2)))  # the lung is an ellipsoid
        point = lung_centre + direction * (to_edge - radius * rng.uniform(0.6, 1.0))
        if phantom.inside_lung(point) and _in_view(grid, point, radius + 3):
            return point
    return None


PLACERS = {"solitary": _solitary_centre, "juxtavascular": _juxtavascular_centre,
           "juxtapleural": _juxtapleural_centre}


def add_nodules(phantom: sc.Phantom, rng: np.random.Generator, grid: sc.Grid, n: int,
                min_diameter: float = 3.0, max_diameter: float = 30.0) -> list[str]:
    placements = []
    diameters = np.exp(rng.uniform(math.log(min_diameter), math.log(max_diameter), n))
    for diameter in sorted(diameters, reverse=True):
        placement = str(rng.choice(NODULE_PLACEMENTS, p=PLACEMENT_ODDS))
        radius = float(diameter) / 2
        point = None
        for _ in range(5):
            point = PLACERS[placement](phantom, rng, grid, radius)
            if point is not None and _clear_of_others(phantom, point, radius):
                break
            point = None
        if point is None:
            continue
        kind = str(rng.choice(NODULE_KINDS, p=KIND_ODDS)) if diameter >= 5 else "solid"
        stretch = rng.uniform(0.85, 1.15, 3)
        stretch /= np.prod(stretch) ** (1 / 3)
        phantom.nodules.append(sc.Nodule(
            centre_mm=tuple(float(v) for v in point),
            diameter_mm=float(diameter),
            kind="part-solid" if kind == "part-solid" else "solid",  # synthetic_ct draws ground glass as "solid"
            hu=float(rng.uniform(-750, -450)) if kind == "ground-glass" else float(rng.uniform(0, 80)),
            core_fraction=float(rng.uniform(0.3, 0.6)) if kind == "part-solid" else 1.0,
            ggo_hu=float(rng.uniform(-700, -420)),
            axes=tuple(float(v) for v in stretch),
        ))
        placements.append(placement)
    return placements


# --- regions and scans ----------------------------------------------------------------------------------------


def _build(rng: np.random.Generator, grid_for, n_nodules: int) -> HardCase:
    acquisition = random_acquisition(rng)
    anatomy = sc.make_phantom(rng, n_nodules=0)
    grid = grid_for(anatomy, acquisition)
    centre = grid.to_patient((np.array(grid.shape[::-1]) - 1) / 2)
    n_trees = int(rng.choice([0, 2, 4, 7, 12], p=[0.1, 0.25, 0.3, 0.2, 0.15]))
    add_trees(anatomy, rng, centre, 0.5 * max(grid.shape[2] * grid.spacing[0], grid.shape[0] * grid.spacing[2]),
              n_trees)
    placements = add_nodules(anatomy, rng, grid, n_nodules)
    rendered = sc.render(anatomy, grid)
    hu = reconstruct(rendered, rng, acquisition["kernel"], acquisition["noise_hu"])
    return HardCase(anatomy, grid, hu, rendered.lung_mask, placements, acquisition["kernel"], acquisition["noise_hu"])


def region(seed: int, region_mm: float) -> HardCase:
    """A training region of about `region_mm` on a side, centred in a lung (near its edge one time in three)."""
    rng = np.random.default_rng(seed)

    def grid_for(anatomy: sc.Phantom, acquisition: dict) -> sc.Grid:
        lung_centre, axes = anatomy.lungs[int(rng.integers(0, 2))]
        spread = 1.0 if rng.random() < 0.33 else 0.7
        for _ in range(200):
            point = lung_centre + rng.uniform(-spread, spread, 3) * axes
            if anatomy.inside_lung(point, margin=8):
                break
        px, dz = acquisition["pixel_spacing"], acquisition["slice_spacing"]
        return sc.grid_around(point, int(region_mm / px), px, max(2, int(region_mm / dz)), dz,
                              acquisition["orientation"], acquisition["rotation_deg"], acquisition["slice_thickness"])

    return _build(rng, grid_for, int(rng.choice([0, 1, 2, 3, 4], p=[0.1, 0.3, 0.3, 0.2, 0.1])))


def scan(seed: int, matrix: int = 256) -> HardCase:
    """A whole validation scan: a 256 × 256 field of view over one lung, 90–160 mm long, 1–5 nodules."""
    rng = np.random.default_rng(seed)

    def grid_for(anatomy: sc.Phantom, acquisition: dict) -> sc.Grid:
        lung_centre, axes = anatomy.lungs[int(rng.integers(0, 2))]
        px, dz = acquisition["pixel_spacing"], acquisition["slice_spacing"]
        fov = matrix * px
        centre_xy = (np.zeros(2) if fov >= 2 * anatomy.body_axes[0] + 20
                     else lung_centre[:2] + rng.uniform(-0.2, 0.2, 2) * axes[:2])
        extent = float(rng.uniform(90, 160))
        z_low, z_high = lung_centre[2] - 0.8 * axes[2], lung_centre[2] + 0.8 * axes[2]
        centre_z = (rng.uniform(z_low + extent / 2, z_high - extent / 2) if z_high - z_low > extent
                    else lung_centre[2])
        return sc.grid_around((centre_xy[0], centre_xy[1], centre_z), matrix, px, max(2, int(round(extent / dz))),
                              dz, acquisition["orientation"], acquisition["rotation_deg"],
                              acquisition["slice_thickness"])

    return _build(rng, grid_for, int(rng.integers(1, 6)))


def as_synthetic_scan(case: HardCase) -> sc.SyntheticScan:
    """For evaluate.run_scan and hard_case_figures.internal_kinds."""
    return sc.SyntheticScan(hu=case.hu, grid=case.grid, lung_mask=case.lung_mask, phantom=case.phantom)
