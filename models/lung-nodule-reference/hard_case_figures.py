"""The lung-nodule card's hard-case figures, on the internal held-out split and on the external set.

Both sets go through `evaluate.run_scan` (DICOM series → the service's series assembly, preprocessing, sliding
window and decoding, the committed ONNX model in ONNX Runtime). Scored with `medimg eval`'s code
(workers/evaluation: LUNA16 matcher, CPM, bootstrap over scans):

* CPM and the operating point's sensitivity and false positives per scan, with 95 % intervals;
* sensitivity at the operating point for nodules ≥ 6 mm, split solitary / juxtavascular / juxtapleural, and for
  juxtavascular nodules ≥ 8 mm (the issue's target), each pooled over the scans with its interval;
* false positives per scan at the operating point on the vessel-rich scans.

The external set labels each nodule by how it was placed (`external_ct.py`). The internal generator does not,
so its nodules are labelled here from its phantom: juxtavascular when the nodule's surface is within
`TOUCH_MM` of a vessel tube's surface, juxtapleural when its centre is within its radius + `TOUCH_MM` of the
lung's edge, solitary otherwise; a vessel-rich internal scan is one whose vessel tubes pass through the field
of view more often than the median scan's.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

import evaluate
import external_ct
import synthetic_ct as sc
from workers.evaluation import validation_sets

N_EXTERNAL = 30
TOUCH_MM = 1.0
KINDS = external_ct.KINDS


@dataclass
class LabelledOutcome:
    outcome: evaluate.ScanOutcome
    kinds: list[str]  # one per nodule of outcome.nodules
    vessel_rich: bool


def internal_kinds(scan: sc.SyntheticScan) -> list[str]:
    """Label the internal generator's nodules by what they touch (see the module docstring)."""
    spacing = (scan.grid.spacing[2], scan.grid.spacing[1], scan.grid.spacing[0])
    # Distance of each lung voxel to the nearest non-lung voxel: the lung edge (nodules are part of the lung).
    to_edge = ndimage.distance_transform_edt(scan.lung_mask, sampling=spacing)
    kinds = []
    for nodule in scan.nodules:
        centre = np.asarray(nodule.centre_mm)
        gap = min((float(sc._segment_distance(*centre, t.start, t.end)) - t.radius - nodule.radius_mm
                   for t in scan.phantom.vessels), default=np.inf)
        column, row, slice_ = np.round(scan.grid.to_voxel(centre)).astype(int)
        inside = all(0 <= v < n for v, n in zip((slice_, row, column), scan.lung_mask.shape, strict=True))
        edge = float(to_edge[slice_, row, column]) if inside else 0.0
        if edge <= nodule.radius_mm + TOUCH_MM:
            kinds.append("juxtapleural")
        elif gap <= TOUCH_MM:
            kinds.append("juxtavascular")
        else:
            kinds.append("solitary")
    return kinds


def _vessels_in_view(scan: sc.SyntheticScan) -> int:
    corners = scan.grid.to_patient(np.array([[0, 0, 0], np.array(scan.grid.shape[::-1]) - 1]))
    low, high = corners.min(axis=0), corners.max(axis=0)
    return sum(bool(np.all(np.minimum(t.start, t.end) < high) and np.all(np.maximum(t.start, t.end) > low))
               for t in scan.phantom.vessels)


def collect_internal(model, n: int = evaluate.N_TEST, log=None) -> list[LabelledOutcome]:
    """The version's internal test split (`evaluate.HELD_OUT`), run and labelled."""
    manifest, runner = model.manifest(), evaluate.onnx_runner(model.onnx_path)
    split = evaluate.HELD_OUT[model.version].test_split
    rows = []
    with tempfile.TemporaryDirectory(prefix="lung-internal-") as scratch:
        for index in range(n):
            scan = evaluate.test_scan(split, index)
            outcome = evaluate.run_scan(scan, manifest, runner, Path(scratch))
            rows.append((outcome, internal_kinds(scan), _vessels_in_view(scan)))
            if log is not None:
                log(f"internal scan {index + 1}/{n}: {len(outcome.nodules)} nodules, {outcome.acquisition}")
    median = float(np.median([count for *_, count in rows]))
    return [LabelledOutcome(outcome, kinds, count > median) for outcome, kinds, count in rows]


def collect_external(model, n: int = N_EXTERNAL, log=None) -> list[LabelledOutcome]:
    """The version's external set (its own seeds, `evaluate.HELD_OUT`), run."""
    manifest, runner = model.manifest(), evaluate.onnx_runner(model.onnx_path)
    seed = evaluate.HELD_OUT[model.version].external_seed
    labelled = []
    with tempfile.TemporaryDirectory(prefix="lung-external-") as scratch:
        for index in range(n):
            scan = external_ct.external_scan(index, seed=seed)
            outcome = evaluate.run_scan(scan, manifest, runner, Path(scratch))
            labelled.append(LabelledOutcome(outcome, [nodule.kind for nodule in scan.nodules], scan.vessel_rich))
            if log is not None:
                log(f"external scan {index + 1}/{n}: {len(outcome.nodules)} nodules ({scan.kernel} kernel, "
                    f"{scan.noise_hu:.0f} HU noise, {scan.facts['trees']} trees), {outcome.acquisition}")
    return labelled


def figures(labelled: list[LabelledOutcome], manifest) -> dict:
    """The headline and hard-case figures with their 95 % intervals (`{"figures", "bootstrap", "counts"}`)."""
    from workers.evaluation.froc import Candidate, Nodule, match_scan
    from workers.evaluation.intervals import BootstrapSettings, mean_figure, pooled_ratio_figure

    settings = BootstrapSettings()
    outcomes = [row.outcome for row in labelled]
    headline = evaluate.intervals(outcomes, manifest)["figures"]
    out = {key: headline[key] for key in ("cpm", "operating_point_sensitivity", "operating_point_fp_per_scan")}
    threshold = manifest.operating_point().threshold
    found, false_positives = [], []
    for row in labelled:
        match = match_scan([Nodule(tuple(map(float, n.centre_mm)), float(n.diameter_mm)) for n in row.outcome.nodules],
                           [Candidate(tuple(map(float, c)), float(s)) for s, c, _ in row.outcome.findings])
        found.append([s is not None and s >= threshold for s in match.nodule_scores])
        false_positives.append(sum(s >= threshold for s in match.false_positive_scores))
    groups = {f"sensitivity_6mm_plus_{kind}": (kind, 6.0) for kind in KINDS}
    groups["sensitivity_8mm_plus_juxtavascular"] = ("juxtavascular", 8.0)
    counts = {}
    for key, (kind, size) in groups.items():
        selected = [[k == kind and n.diameter_mm >= size for k, n in zip(row.kinds, row.outcome.nodules, strict=True)]
                    for row in labelled]
        hits = np.array([sum(f and s for f, s in zip(fs, ss, strict=True)) for fs, ss in zip(found, selected, strict=True)])
        totals = np.array([sum(ss) for ss in selected])
        counts[key] = (int(hits.sum()), int(totals.sum()))
        if totals.sum():
            out[key] = pooled_ratio_figure(hits, totals, settings)
    rich = np.array([row.vessel_rich for row in labelled])
    counts["vessel_rich_scans"] = (int(rich.sum()), len(labelled))
    if rich.any():
        out["fp_per_scan_vessel_rich"] = mean_figure(np.array(false_positives)[rich], settings)
    return {"figures": out, "bootstrap": settings.as_json(), "counts": counts}


def sets_for(version: int) -> dict[str, validation_sets.ValidationSet]:
    """The card's two set blocks for a version (each version's seeds are its own, `evaluate.HELD_OUT`)."""
    held_out = evaluate.HELD_OUT[version]
    first_read = ("; first read after version 2 was fixed" if version > 1 else "")
    return {
        "internal": validation_sets.ValidationSet(
            "internal_hard_cases", "Hard cases on the internal held-out test split",
            f"The {evaluate.N_TEST} test scans above (seeds {evaluate.SPLIT_SEEDS[held_out.test_split]}+i), "
            "nodules labelled from the phantom (juxtavascular: surface within 1 mm of a vessel tube; juxtapleural: "
            "within its radius + 1 mm of the lung's edge); vessel-rich: more vessel tubes in the field of view "
            "than the median scan. Scored with `medimg eval`'s LUNA16 matcher at the default operating point."),
        "external": validation_sets.ValidationSet(
            "external", "External validation set (independently written generator)",
            f"{N_EXTERNAL} scans of `external_ct.py` (seeds {held_out.external_seed}+i; never used for training or "
            f"selection{first_read}): branching, tapering spline vessel trees crossing the slices at every angle "
            "(end-on dots), solitary, juxtavascular and juxtapleural nodules of 4–24 mm, slices 0.6–2.5 mm, pixels "
            "0.55–0.95 mm, 10–60 HU noise with soft or sharp kernels; vessel-rich: grown with at least "
            f"{external_ct.DENSE_TREES} trees. Same pipeline, model and scoring."),
    }


SETS = sets_for(1)  # the keys and titles every version shares


def evaluate_sets(model, internal: list[LabelledOutcome], log=None) -> dict[str, dict]:
    manifest = model.manifest()
    return {"internal": figures(internal, manifest),
            "external": figures(collect_external(model, log=log), manifest)}


def _notes(result: dict) -> str:
    counts = result["counts"]
    found = "; ".join(f"{key}: {hit}/{total}" for key, (hit, total) in counts.items() if key != "vessel_rich_scans")
    rich, total = counts["vessel_rich_scans"]
    return f"Nodules found / present: {found}. Vessel-rich scans: {rich} of {total}."


def write_sets(by_set: dict[str, dict], model) -> None:
    validation_sets.write_all(model.manifest_path, model.card_path, sets_for(model.version),
                              {key: result["figures"] for key, result in by_set.items()},
                              by_set["external"]["bootstrap"], "scans", evaluate.CARD_END,
                              {key: _notes(result) for key, result in by_set.items()})


def check_sets(stored: dict[str, float], by_set: dict[str, dict], tolerance: float) -> list[str]:
    return validation_sets.drift_all(stored, SETS, {key: result["figures"] for key, result in by_set.items()},
                                     tolerance)
