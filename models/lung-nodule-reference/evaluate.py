"""FROC and CPM of the committed lung-nodule reference model on held-out synthetic CT scans.

    .venv/bin/python models/lung-nodule-reference/evaluate.py           # print the metrics (highest version)
    .venv/bin/python models/lung-nodule-reference/evaluate.py --version 1 --check  # one version's
    .venv/bin/python models/lung-nodule-reference/evaluate.py --write   # store them in manifest.json and CARD.md
    .venv/bin/python models/lung-nodule-reference/evaluate.py --check   # exit 1 if they drift from the manifest
    .venv/bin/python models/lung-nodule-reference/evaluate.py --write-intervals  # add the intervals only
    .venv/bin/python models/lung-nodule-reference/evaluate.py --write-sets  # hard cases + external set (hard_case_figures.py)

Every test scan is a full synthetic acquisition (256 x 256 matrix, so wide fields of view are targeted
reconstructions over one lung), written as a DICOM series, read back by the service's series assembly
(`workers/imaging/ct_series.py`) and run through the pipeline's own preprocessing, sliding window and decoding
with the version's committed `model.onnx` in ONNX Runtime. Each version has its own held-out sets (`HELD_OUT`),
drawn from seeds first used after that version was fixed: version 1's test split comes from `synthetic_ct.py`
(pixels 0.5–1.0 mm, slices 0.625–5 mm, 3–30 mm solid or part-solid nodules), version 2's from its training
generator `hard_case_ct.py`, and each has its own seeds of the external set (`external_ct.py`).

FROC follows LUNA16: a candidate hits a nodule when its centre lies within the nodule's radius; further
hits on an already-hit nodule are ignored; every other candidate is a false positive. Sensitivity is read
at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false positives per scan; the CPM is their mean.

The CPM, the sensitivity at each rate and the operating point's sensitivity and false positives per scan get
95 % intervals by bootstrap over the scans (a scan's nodules and candidates move together, as in LUNA16's own
bootstrap), scored by `medimg eval`'s lung-nodule code (workers/evaluation); `--check` reproduces the intervals
as it reproduces the figures, and `--write-intervals` refuses if that code's figure is not the card's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
for _path in (str(REPO_ROOT), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import external_ct  # noqa: E402
import hard_case_ct  # noqa: E402
import synthetic_ct as sc  # noqa: E402
from app.schemas.manifest import ModelManifest  # noqa: E402
from app.schemas.options import LungNoduleDetectionOptions  # noqa: E402
from workers.evaluation import card as model_card  # noqa: E402
from workers.evaluation.model_scripts import ModelFolder  # noqa: E402

SPLIT_SEEDS = {"train": 10_000_000, "val": 20_000_000, "test": 30_000_000, "val-hard": 22_000_000,
               "test-hard": 32_000_000}
HARD_CASE_SPLITS = ("val-hard", "test-hard")  # drawn by hard_case_ct.scan; the others by synthetic_ct


@dataclass(frozen=True)
class HeldOut:
    """A version's held-out sets: its internal test split and the seeds of its external set."""

    test_split: str
    external_seed: int
    operating_point_from: str  # the val splits train.py read the operating point on, for the manifest


HELD_OUT = {
    1: HeldOut("test", external_ct.EXTERNAL_SEED, "the synthetic val split"),
    # Version 2 was designed after version 1's test and external figures were read: fresh seeds for both.
    2: HeldOut("test-hard", 73_000_000, "the synthetic val and val-hard splits (each)"),
}


def model_folder(version: int | None = None) -> ModelFolder:
    """models/lung-nodule-reference/<version>/; by default the highest version present, the one the service serves."""
    if version is None:
        version = max(v for v in HELD_OUT if ModelFolder(HERE, v).manifest_path.exists())
    return ModelFolder(HERE, version)


N_TEST = 30
MATRIX = 256
FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
CHECK_TOLERANCE = 0.03
CARD_BEGIN = "<!-- metrics:begin (written by evaluate.py --write) -->"
CARD_END = "<!-- metrics:end -->"


@dataclass
class ScanOutcome:
    nodules: list[sc.Nodule]
    findings: list[tuple[float, np.ndarray, float]]  # score, centre mm, diameter mm
    acquisition: str
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)


def test_scan(split: str, index: int, matrix: int = MATRIX) -> sc.SyntheticScan:
    if split in HARD_CASE_SPLITS:  # version 2's hard-case splits, from its training generator
        return hard_case_ct.as_synthetic_scan(hard_case_ct.scan(SPLIT_SEEDS[split] + index, matrix))
    rng = np.random.default_rng(SPLIT_SEEDS[split] + index)
    return sc.simulate_scan(rng, matrix=matrix, n_nodules=int(rng.integers(1, 6)))


def onnx_runner(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    return lambda batch: session.run([output_name], {input_name: batch})[0]


def run_scan(scan: sc.SyntheticScan, manifest: ModelManifest, runner, scratch: Path) -> ScanOutcome:
    """The scan as DICOM → the service's series assembly and pipeline steps → every candidate."""
    from workers.imaging.ct_series import load_ct_series
    from workers.pipelines.lung_nodule_detection import (
        build_result,
        decode_components,
        preprocess,
        sliding_window_probability,
    )

    started = time.perf_counter()
    paths = sc.write_ct_series(scan.hu, scan.grid, scratch, shuffle_names=True)
    ct = load_ct_series(paths)
    resampled = preprocess(ct, manifest)
    probability = sliding_window_probability(resampled.volume, manifest, runner)
    candidates = decode_components(probability, resampled.spacing_mm, manifest)
    result = build_result(candidates, ct, resampled, manifest, LungNoduleDetectionOptions(score_threshold=0.0))
    for path in paths:
        path.unlink()
    grid = scan.grid
    acquisition = (f"{grid.spacing[0]:.2f} mm px, {grid.spacing[2]:g} mm slices, "
                   f"{grid.shape[2]}x{grid.shape[1]}x{grid.shape[0]}")
    return ScanOutcome(
        nodules=list(scan.nodules),
        findings=[(f.score, np.asarray(f.center_mm), f.diameter_mm) for f in result.nodules],
        acquisition=acquisition,
        seconds=time.perf_counter() - started,
    )


def collect(manifest: ModelManifest, split: str, n: int, onnx_path: Path, log=None) -> list[ScanOutcome]:
    runner = onnx_runner(onnx_path)
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="lung-eval-") as scratch:
        for index in range(n):
            outcome = run_scan(test_scan(split, index), manifest, runner, Path(scratch))
            outcomes.append(outcome)
            if log is not None:
                log(f"{split} scan {index + 1}/{n}: {len(outcome.nodules)} nodules, {len(outcome.findings)} "
                    f"candidates, {outcome.acquisition}, {outcome.seconds:.1f}s")
    return outcomes


def match(outcome: ScanOutcome) -> tuple[list[tuple[float, int | None]], list[tuple[int, float, float, float]]]:
    """Per candidate (score, nodule index it hits or None, duplicates dropped); per hit nodule
    (index, score, centre error mm, diameter error fraction) of its best candidate."""
    labelled: list[tuple[float, int | None]] = []
    hit: dict[int, tuple[float, float, float]] = {}
    for score, centre, diameter in sorted(outcome.findings, key=lambda f: f[0], reverse=True):
        best = None
        for k, nodule in enumerate(outcome.nodules):
            distance = float(np.linalg.norm(centre - np.asarray(nodule.centre_mm)))
            if distance <= nodule.radius_mm and (best is None or distance < best[1]):
                best = (k, distance)
        if best is None:
            labelled.append((score, None))
        elif best[0] not in hit:
            nodule = outcome.nodules[best[0]]
            hit[best[0]] = (score, best[1], (diameter - nodule.diameter_mm) / nodule.diameter_mm)
            labelled.append((score, best[0]))
    return labelled, [(k, *v) for k, v in hit.items()]


def froc(outcomes: list[ScanOutcome]) -> dict:
    scores_tp, scores_fp = [], []
    n_nodules = sum(len(o.nodules) for o in outcomes)
    for outcome in outcomes:
        labelled, _ = match(outcome)
        for score, nodule in labelled:
            (scores_fp if nodule is None else scores_tp).append(score)
    thresholds = np.unique(np.concatenate([scores_tp, scores_fp, [np.inf]]))[::-1]
    tp, fp = np.array(scores_tp), np.array(scores_fp)
    sensitivity = np.array([(tp >= t).sum() / max(n_nodules, 1) for t in thresholds])
    fp_rate = np.array([(fp >= t).sum() / len(outcomes) for t in thresholds])
    at_rates = {}
    for rate in FP_RATES:
        allowed = fp_rate <= rate
        at_rates[rate] = float(sensitivity[allowed].max()) if allowed.any() else 0.0
    return {
        "thresholds": thresholds,
        "sensitivity": sensitivity,
        "fp_rate": fp_rate,
        "at_rates": at_rates,
        "cpm": float(np.mean(list(at_rates.values()))),
        "n_nodules": n_nodules,
        "max_sensitivity": float(sensitivity.max()) if len(sensitivity) else 0.0,
    }


def threshold_at_fp_rate(outcomes: list[ScanOutcome], rate: float) -> tuple[float, float, float]:
    """Lowest score threshold keeping false positives per scan at or under `rate`."""
    curve = froc(outcomes)
    allowed = np.flatnonzero((curve["fp_rate"] <= rate) & np.isfinite(curve["thresholds"]))
    if not len(allowed):
        return 0.99, 0.0, 0.0
    i = allowed[-1]
    threshold = float(np.floor(curve["thresholds"][i] * 1e4) / 1e4)
    return threshold, float(curve["sensitivity"][i]), float(curve["fp_rate"][i])


def at_threshold(outcomes: list[ScanOutcome], threshold: float) -> dict:
    n_nodules = sum(len(o.nodules) for o in outcomes)
    found, fps, large_found, large_total, centre_errors, diameter_errors = 0, 0, 0, 0, [], []
    for outcome in outcomes:
        labelled, hits = match(outcome)
        fps += sum(1 for score, nodule in labelled if nodule is None and score >= threshold)
        for k, score, centre_error, diameter_error in hits:
            if score >= threshold:
                found += 1
                centre_errors.append(centre_error)
                diameter_errors.append(abs(diameter_error))
                if outcome.nodules[k].diameter_mm >= 6:
                    large_found += 1
        large_total += sum(1 for n in outcome.nodules if n.diameter_mm >= 6)
    return {
        "sensitivity": found / max(n_nodules, 1),
        "fp_per_scan": fps / len(outcomes),
        "sensitivity_6mm_plus": large_found / max(large_total, 1),
        "centre_error_mm_median": float(np.median(centre_errors)) if centre_errors else float("nan"),
        "diameter_error_fraction_median": float(np.median(diameter_errors)) if diameter_errors else float("nan"),
    }


def sensitivity_by_size(outcomes: list[ScanOutcome], threshold: float) -> dict[str, tuple[int, int]]:
    bins = {"3-6 mm": (3, 6), "6-10 mm": (6, 10), "10-20 mm": (10, 20), "20-30 mm": (20, 31)}
    counts = {name: [0, 0] for name in bins}
    for outcome in outcomes:
        _, hits = match(outcome)
        found = {k for k, score, *_ in hits if score >= threshold}
        for k, nodule in enumerate(outcome.nodules):
            for name, (low, high) in bins.items():
                if low <= nodule.diameter_mm < high:
                    counts[name][1] += 1
                    counts[name][0] += k in found
    return {name: (found, total) for name, (found, total) in counts.items()}


def evaluate(n: int | None = None, log=None, with_intervals: bool = False,
             outcomes: list[ScanOutcome] | None = None, model: ModelFolder | None = None) -> dict:
    """The card's figures; with `with_intervals`, also `"intervals"` (their 95 % intervals over the scans).
    `outcomes`: the test split's scans already run (by hard_case_figures), so they are not run twice."""
    model = model or model_folder()
    manifest = model.checked_manifest()  # refused unless model.onnx is the file the manifest names
    n = N_TEST if n is None else n
    started = time.time()
    split = HELD_OUT[model.version].test_split
    outcomes = collect(manifest, split, n, model.onnx_path, log=log) if outcomes is None else outcomes
    curve = froc(outcomes)
    threshold = manifest.operating_point().threshold
    results = {
        "version": model.version,
        "test_split": split,
        "n_scans": n,
        "n_nodules": curve["n_nodules"],
        "cpm": curve["cpm"],
        **{f"sensitivity_at_{rate:g}_fp": value for rate, value in curve["at_rates"].items()},
        "operating_point": at_threshold(outcomes, threshold),
        "by_size": sensitivity_by_size(outcomes, threshold),
        "threshold": threshold,
        "seconds_per_scan": float(np.mean([o.seconds for o in outcomes])),
        "wall_seconds": time.time() - started,
    }
    if with_intervals:
        results["intervals"] = intervals(outcomes, manifest)
    return results


def intervals(outcomes: list[ScanOutcome], manifest: ModelManifest) -> dict:
    """95 % intervals by bootstrap over the scans, scored by `medimg eval`'s own lung-nodule code (its LUNA16
    matcher and CPM, workers/evaluation), under this card's metric names."""
    from workers.evaluation.base import Case
    from workers.evaluation.intervals import BootstrapSettings
    from workers.evaluation.tasks.lung_nodule_detection import EVALUATION

    settings = BootstrapSettings()
    cases = [Case(case_id=str(i), files=(), truth={"nodules": [[*map(float, n.centre_mm), float(n.diameter_mm)]
                                                                for n in o.nodules]})
             for i, o in enumerate(outcomes)]
    records = [{"candidates": [[*map(float, centre), float(score)] for score, centre, _ in o.findings]}
               for o in outcomes]
    scored = EVALUATION.score(cases, records, manifest, settings).metrics
    point = manifest.operating_point().name
    names = {"cpm": "cpm", **{f"sensitivity_at_{rate:g}_fp": f"sensitivity@{rate:g}fp" for rate in FP_RATES},
             "operating_point_sensitivity": f"sensitivity@{point}",
             "operating_point_fp_per_scan": f"fp_per_scan@{point}"}
    return {"figures": {key: scored[name] for key, name in names.items()}, "bootstrap": settings.as_json()}


def interval_table(results: dict) -> str:
    return model_card.interval_table(results["intervals"]["figures"], results["intervals"]["bootstrap"], "scans",
                                     "a scan's nodules and candidates resampled together")


def metrics_for_manifest(results: dict) -> dict[str, float]:
    keys = ["cpm"] + [f"sensitivity_at_{rate:g}_fp" for rate in FP_RATES]
    metrics = {key: round(results[key], 4) for key in keys}
    point = results["operating_point"]
    metrics["operating_point_sensitivity"] = round(point["sensitivity"], 4)
    metrics["operating_point_fp_per_scan"] = round(point["fp_per_scan"], 4)
    metrics["operating_point_sensitivity_6mm_plus"] = round(point["sensitivity_6mm_plus"], 4)
    return metrics


def card_block(results: dict) -> str:
    rates = " | ".join(f"{rate:g}" for rate in FP_RATES)
    values = " | ".join(f"{results[f'sensitivity_at_{rate:g}_fp']:.3f}" for rate in FP_RATES)
    point = results["operating_point"]
    sizes = "\n".join(f"| {name} | {found}/{total} | {found / total:.3f} |" if total else f"| {name} | 0/0 | - |"
                      for name, (found, total) in results["by_size"].items())
    split = results["test_split"]
    generator = "hard_case_ct.py" if split in HARD_CASE_SPLITS else "synthetic_ct.py"
    return "\n".join([
        CARD_BEGIN,
        f"Held-out synthetic test split of `{generator}`: **{results['n_scans']} scans, {results['n_nodules']} "
        f"nodules** (seeds {SPLIT_SEEDS[split]}+i), through ONNX Runtime and the service's own series assembly, "
        "preprocessing and decoding.",
        "",
        f"| FPs per scan | {rates} | **CPM** |",
        "|---|" + "---|" * len(FP_RATES) + "---|",
        f"| Sensitivity | {values} | **{results['cpm']:.3f}** |",
        "",
        f"At the default operating point (score ≥ {results['threshold']}): sensitivity "
        f"{point['sensitivity']:.3f}, {point['fp_per_scan']:.2f} false positives per scan, sensitivity for "
        f"nodules ≥ 6 mm {point['sensitivity_6mm_plus']:.3f}; median centre error "
        f"{point['centre_error_mm_median']:.2f} mm and median diameter error "
        f"{100 * point['diameter_error_fraction_median']:.1f} % on the nodules found.",
        "",
        "| Diameter | Found | Sensitivity |",
        "|---|---|---|",
        sizes,
        interval_table(results) + CARD_END,
    ])


def write(results: dict, model: ModelFolder) -> None:
    """The figures into the stored manifest (only the keys they own change) and the card's metrics block."""
    import hard_case_figures  # imports this module: loaded here, once this module is complete
    from workers.evaluation.model_scripts import edited_manifest, write_card_block
    from workers.evaluation.validation_sets import kept_figures

    default_point = model.manifest().default_operating_point
    with edited_manifest(model.manifest_path) as data:
        data["metrics"] = {**metrics_for_manifest(results),
                           **model_card.stored_metrics(results["intervals"]["figures"]),
                           **kept_figures(data.get("metrics", {}), hard_case_figures.sets_for(model.version).values())}
        for point in data["operating_points"]:
            if point["name"] == default_point:
                point["sensitivity"] = round(results["operating_point"]["sensitivity"], 4)
                point["measured_on"] = (
                    f"threshold chosen on {HELD_OUT[model.version].operating_point_from} by train.py (lowest with <= 1 false "
                    f"positive per scan); sensitivity measured on the held-out {results['test_split']} split "
                    f"({results['n_scans']} scans, {results['n_nodules']} nodules; "
                    f"{results['operating_point']['fp_per_scan']:.2f} FP/scan there)"
                )
    write_card_block(model.card_path, CARD_BEGIN, CARD_END, card_block(results))


def write_intervals(results: dict, model: ModelFolder) -> list[str]:
    """Only the intervals, into the manifest and beside the card's figures (refused if a figure moved)."""
    figures = results["intervals"]["figures"]
    return model_card.write_intervals(model.manifest_path, model.card_path, CARD_END, results["intervals"],
                                      metrics_for_manifest(results), {key: key for key in figures},
                                      interval_table(results))


def main() -> int:
    import hard_case_figures  # imports this module: loaded here, once this module is complete

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", type=int, choices=sorted(HELD_OUT), default=None,
                        help="the model version (default: the highest, the one served)")
    parser.add_argument("--n", type=int, default=None, help=f"test scans (default {N_TEST})")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--check", action="store_true")
    model_card.add_write_intervals_option(parser)
    parser.add_argument("--write-sets", action="store_true",
                        help="store the hard-case figures of the test split and the external set's figures")
    args = parser.parse_args()
    started = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - started:6.0f}s] {message}", flush=True)

    model = model_folder(args.version)
    model.checked_manifest()  # the model file is the one the manifest names
    sets = args.write_sets or args.check
    labelled = (hard_case_figures.collect_internal(model, args.n or N_TEST, log=log) if sets else None)
    results = evaluate(args.n, log=log, with_intervals=True,
                       outcomes=[row.outcome for row in labelled] if labelled else None, model=model)
    by_set = hard_case_figures.evaluate_sets(model, labelled, log=log) if sets else {}
    print(json.dumps({key: value["figures"] for key, value in by_set.items()}, indent=2))
    if args.write_sets:
        hard_case_figures.write_sets(by_set, model)
    printable = {k: v for k, v in results.items()}
    print(json.dumps(printable, indent=2, default=str))
    if args.write:
        write(results, model)
        print(f"wrote metrics to {model.manifest_path} and {model.card_path}")
    if args.write_intervals:
        if model_card.refused(write_intervals(results, model)):
            return 1
        print(f"wrote the intervals to {model.manifest_path} and {model.card_path}")
    if args.check:
        expected = model.manifest().metrics
        measured = metrics_for_manifest(results)
        drift = {k: (expected.get(k), v) for k, v in measured.items()
                 if k not in expected or abs(expected[k] - v) > CHECK_TOLERANCE}
        interval_problems = model_card.drift(expected, results["intervals"]["figures"], CHECK_TOLERANCE)
        interval_problems += hard_case_figures.check_sets(expected, by_set, CHECK_TOLERANCE)
        if drift or interval_problems:
            print(f"metrics drift from the manifest beyond {CHECK_TOLERANCE}: {drift}", file=sys.stderr)
            print("\n".join(interval_problems), file=sys.stderr)
            return 1
        print("metrics match the manifest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
