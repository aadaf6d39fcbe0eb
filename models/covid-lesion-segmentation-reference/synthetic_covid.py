"""Synthetic chest CT with COVID-19-like lesions of known masks, over the lung-nodule reference phantom.

The chest (body, ribs, spine, heart, lungs, vessels, airways) is `models/lung-nodule-reference/synthetic_ct.py`'s
phantom, rendered on a whole-chest grid; lesions are then painted in patient coordinates:

- ground-glass opacity (GGO): lung parenchyma raised to about -700…-400 HU, vessels still visible through it;
- consolidation: about -100…+50 HU, vessels hidden; often as a core inside a GGO halo.

Lesions are lobulated blobs clipped to the lung, mostly peripheral (subpleural) and basal. The truth is a
label volume on the same grid: 0 background, 1 GGO, 2 consolidation, inside the phantom's lung mask.

    case = simulate_case(np.random.default_rng(0), matrix=128, slice_spacing=5.0)
    case.hu, case.labels, case.lung_mask, case.grid
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from workers.evaluation.model_folders import model_folder_module

BACKGROUND, GGO, CONSOLIDATION = 0, 1, 2
CLASS_NAMES = ["background", "ground-glass-opacity", "consolidation"]


def synthetic_ct():
    """The lung-nodule reference phantom module, under the one name every caller loads it by."""
    return model_folder_module("lung-nodule-reference", "synthetic_ct")


@dataclass(frozen=True)
class Lesion:
    centre_mm: tuple[float, float, float]
    radii_mm: tuple[float, float, float]
    kind: str  # "ggo", "consolidation" or "mixed" (consolidation core in a GGO halo)
    ggo_hu: float
    consolidation_hu: float
    core_fraction: float
    wobble: tuple[tuple[float, float, float, float], ...]  # (kx, ky, kz, phase) of the lobulation


@dataclass
class Case:
    hu: np.ndarray  # float32 (slice, row, column), with noise
    labels: np.ndarray  # uint8, 0/1/2, inside the lung mask
    lung_mask: np.ndarray  # bool: the phantom's lungs
    lung_side: np.ndarray  # uint8: 0 outside, 1 right lung, 2 left lung
    grid: object
    lesions: list[Lesion]

    def volumes_ml(self) -> dict[str, float]:
        voxel_ml = float(np.prod(self.grid.spacing)) / 1000.0
        return {"ggo": float((self.labels == GGO).sum() * voxel_ml),
                "consolidation": float((self.labels == CONSOLIDATION).sum() * voxel_ml),
                "lung": float(self.lung_mask.sum() * voxel_ml)}

    def involvement_percent(self) -> float:
        return 100.0 * float((self.labels > 0).sum()) / max(float(self.lung_mask.sum()), 1.0)


def make_lesions(phantom, rng: np.random.Generator, n_lesions: int | None = None) -> list[Lesion]:
    """Random lesions inside the lungs, mostly peripheral and basal."""
    n = int(rng.integers(0, 9)) if n_lesions is None else n_lesions
    lesions = []
    for _ in range(n):
        for _attempt in range(200):
            centre, axes = phantom.lungs[int(rng.integers(0, 2))]
            # Basal: z drawn towards the lung base; peripheral: a point near the lung surface.
            direction = rng.normal(0, 1, 3)
            direction[2] = -abs(direction[2]) if rng.random() < 0.7 else direction[2]
            direction /= np.linalg.norm(direction)
            depth = rng.uniform(0.70, 0.95) if rng.random() < 0.8 else rng.uniform(0.2, 0.7)
            point = centre + direction * axes * depth
            if phantom.inside_lung(point, margin=2.0):
                break
        else:
            continue
        kind = str(rng.choice(["ggo", "mixed", "consolidation"], p=[0.5, 0.3, 0.2]))
        radius = float(np.exp(rng.uniform(math.log(10), math.log(40))))
        radii = tuple(float(radius * v) for v in rng.uniform(0.7, 1.3, 3))
        wobble = tuple((float(a), float(b), float(c), float(d)) for a, b, c, d in
                       np.column_stack([rng.normal(0, 0.12, (3, 3)), rng.uniform(0, 2 * math.pi, 3)]))
        lesions.append(Lesion(
            centre_mm=tuple(float(v) for v in point), radii_mm=radii, kind=kind,
            ggo_hu=float(rng.uniform(-700, -400)), consolidation_hu=float(rng.uniform(-100, 50)),
            core_fraction=float(rng.uniform(0.4, 0.7)), wobble=wobble,
        ))
    return lesions


def paint_lesions(hu: np.ndarray, lung_mask: np.ndarray, grid, lesions: list[Lesion],
                  rng: np.random.Generator) -> np.ndarray:
    """Paints lesions into a noise-free HU volume (in place); returns the label volume."""
    labels = np.zeros(hu.shape, np.uint8)
    affine = grid.affine
    inverse = np.linalg.inv(affine)
    for lesion in lesions:
        centre = np.asarray(lesion.centre_mm)
        reach = max(lesion.radii_mm) * 1.4
        corners = np.array([[centre[0] + a, centre[1] + b, centre[2] + c]
                            for a in (-reach, reach) for b in (-reach, reach) for c in (-reach, reach)])
        voxels = corners @ inverse[:3, :3].T + inverse[:3, 3]  # (column, row, slice)
        low = np.clip(np.floor(voxels.min(axis=0)).astype(int), 0, None)
        high = np.minimum(np.ceil(voxels.max(axis=0)).astype(int) + 1, [hu.shape[2], hu.shape[1], hu.shape[0]])
        if np.any(high <= low):
            continue
        s = np.arange(low[2], high[2])[:, None, None]
        r = np.arange(low[1], high[1])[None, :, None]
        c = np.arange(low[0], high[0])[None, None, :]
        x, y, z = (affine[i, 3] + affine[i, 0] * c + affine[i, 1] * r + affine[i, 2] * s for i in range(3))
        distance = np.sqrt(((x - centre[0]) / lesion.radii_mm[0]) ** 2 + ((y - centre[1]) / lesion.radii_mm[1]) ** 2
                           + ((z - centre[2]) / lesion.radii_mm[2]) ** 2)
        bumps = sum(np.sin(kx * x + ky * y + kz * z + phase) for kx, ky, kz, phase in lesion.wobble)
        distance = distance + 0.12 * bumps
        region = (slice(low[2], high[2]), slice(low[1], high[1]), slice(low[0], high[0]))
        lung = lung_mask[region]
        inside = (distance < 1.0) & lung
        if lesion.kind == "consolidation":
            core = inside
        elif lesion.kind == "mixed":
            core = inside & (distance < lesion.core_fraction)
        else:
            core = np.zeros_like(inside)
        ggo = inside & ~core
        block = hu[region]
        texture = rng.normal(0, 25, block.shape).astype(np.float32)
        block[ggo] = np.maximum(block[ggo], lesion.ggo_hu + texture[ggo])
        block[core] = lesion.consolidation_hu + 0.5 * texture[core]
        lab = labels[region]
        lab[ggo & (lab == BACKGROUND)] = GGO
        lab[core] = CONSOLIDATION
    return labels


def lungs_inside_body(phantom, margin: float = 0.08) -> bool:
    """False when a lung reaches within `margin` (fraction of the body radius) of the skin: some random
    phantoms poke a lung through the chest wall, which no real chest does."""
    ax, ay = phantom.body_axes
    for centre, axes in phantom.lungs:
        t = np.linspace(0, 2 * math.pi, 72)
        for fz in (0.0, 0.5):
            scale = math.sqrt(1 - fz ** 2)
            x = centre[0] + axes[0] * scale * np.cos(t)
            y = centre[1] + axes[1] * scale * np.sin(t)
            if np.max(np.sqrt((x / ax) ** 2 + (y / ay) ** 2)) > 1 - margin:
                return False
    return True


def whole_chest_grid(sc, phantom, rng: np.random.Generator, matrix: int, slice_spacing: float,
                     orientation: str, pixel_spacing: float | None = None, z_margin_mm: float = 15.0):
    """A grid over the whole chest in plane and the whole lung height along z."""
    fov = 2 * phantom.body_axes[0] + rng.uniform(25, 60)
    pixel_spacing = fov / matrix if pixel_spacing is None else pixel_spacing
    z_low, z_high = phantom.lung_extent_z
    z_low, z_high = z_low - z_margin_mm, z_high + z_margin_mm
    n_slices = max(2, int(math.ceil((z_high - z_low) / slice_spacing)) + 1)
    return sc.grid_around((rng.uniform(-5, 5), rng.uniform(-5, 5), (z_low + z_high) / 2), matrix, pixel_spacing,
                          n_slices, slice_spacing, orientation)


def simulate_case(rng: np.random.Generator, matrix: int = 128, slice_spacing: float | None = None,
                  orientation: str | None = None, pixel_spacing: float | None = None,
                  n_lesions: int | None = None, noise_hu: float | None = None) -> Case:
    sc = synthetic_ct()
    for _ in range(50):
        phantom = sc.make_phantom(rng, n_nodules=0)
        if lungs_inside_body(phantom):
            break
    slice_spacing = float(rng.choice([2.5, 3.0, 5.0])) if slice_spacing is None else slice_spacing
    orientation = orientation or str(rng.choice(["HFS", "FFS", "HFP", "FFP"], p=[0.55, 0.25, 0.1, 0.1]))
    grid = whole_chest_grid(sc, phantom, rng, matrix, slice_spacing, orientation, pixel_spacing)
    rendered = sc.render(phantom, grid, supersample=1)
    lesions = make_lesions(phantom, rng, n_lesions)
    labels = paint_lesions(rendered.hu, rendered.lung_mask, grid, lesions, rng)
    hu = sc.acquire(rendered, rng, noise_hu=noise_hu)
    lung_side = np.zeros(labels.shape, np.uint8)
    s, r, c = np.nonzero(rendered.lung_mask)
    x = grid.affine[0, 3] + grid.affine[0, 0] * c + grid.affine[0, 1] * r + grid.affine[0, 2] * s
    lung_side[s, r, c] = np.where(x > 0, 2, 1)
    return Case(hu=hu, labels=labels, lung_mask=rendered.lung_mask, lung_side=lung_side, grid=grid, lesions=lesions)
