"""A reference model's 95 % intervals on its card, stored beside its metrics, and checked by `evaluate.py --check`.

Each reference model's `evaluate.py` computes its headline figures with this package's bootstrap
(`intervals.py`), so the card and a site's `medimg eval` report intervals the same way. The interval bounds
are stored in the manifest's `metrics` as `<metric>_ci95_low` / `<metric>_ci95_high` (and the cases
resampled, `<metric>_ci95_n`), so `--check` compares them as it compares the point figures; the card gets a
table of them. Writing intervals never rewrites a point figure: one recomputed differently from the stored
one is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from workers.evaluation.model_scripts import differences, edited_manifest

INTERVALS_HEADING = "\n95 % intervals, bootstrap over"
# An interval's statistic must give the card's figure: within half a unit of the coarsest rounding on a card
# (3 decimals), since some figures are stored rounded; another definition of the figure differs by more.
SAME_FIGURE = 5e-4


def stored_metrics(figures: dict[str, dict]) -> dict[str, float]:
    """The manifest's entries for the intervals: `<metric>_ci95_low`, `<metric>_ci95_high`, `<metric>_ci95_n`."""
    out: dict[str, float] = {}
    for key, figure in figures.items():
        if figure["ci95"] is None:
            continue
        out[f"{key}_ci95_low"], out[f"{key}_ci95_high"] = (round(v, 4) for v in figure["ci95"])
        out[f"{key}_ci95_n"] = float(figure["n"])
    return out


def drift(stored: dict[str, float], figures: dict[str, dict], tolerance: float) -> list[str]:
    """Interval bounds (and case counts, exactly) recomputed more than `tolerance` from the stored ones, or not
    stored."""
    return differences(stored, stored_metrics(figures), lambda key: 0.0 if key.endswith("_ci95_n") else tolerance,
                       "not in the manifest (evaluate.py --write-intervals stores it)")


def moved_points(stored: dict[str, float], measured: dict[str, float], figures: dict[str, dict],
                 keys: dict[str, str], decimals: int = 4) -> list[str]:
    """Point figures recomputed differently from the stored ones at the stored precision, or whose interval is
    not around the card's figure (`keys`: interval figure → stored metric, `measured`: this run's figures)."""
    moved = []
    for name, metric in keys.items():
        value = round(measured[metric], decimals)
        if metric not in stored or value != round(stored[metric], decimals):
            moved.append(f"{metric}: card/manifest {stored.get(metric)}, recomputed {value}")
        elif abs(figures[name]["value"] - measured[metric]) > SAME_FIGURE:
            moved.append(f"{metric}: card/manifest {stored[metric]}, the interval's statistic gives "
                         f"{figures[name]['value']}")
    return moved


def interval_table(figures: dict[str, dict], bootstrap: dict, over: str, detail: str = "") -> str:
    """Markdown for the card: one row per figure (value, 95 % interval, n) under a line saying how."""
    rows = [f"| {key} | {f['value']:.4f} | " + (f"{f['ci95'][0]:.4f} – {f['ci95'][1]:.4f}" if f["ci95"] else "–")
            + f" | {f['n']} |" for key, f in figures.items()]
    how = f"; {detail}" if detail else ""
    return "\n".join([
        "", f"{INTERVALS_HEADING.strip()} the {over} ({bootstrap['n_resamples']} resamples, seed "
        f"{bootstrap['seed']}{how}), with `medimg eval`'s code:", "",
        "| metric | value | 95 % interval | n |", "|---|---|---|---|", *rows, ""])


def place_table(card: str, table: str, end: str) -> str:
    """The card with `table` as the last part of its metrics block (before `end`), replacing an earlier one."""
    head, tail = card.split(end, 1)
    start = head.rfind(INTERVALS_HEADING)
    if start >= 0:
        head = head[:start]
    return head.rstrip("\n") + "\n" + table + end + tail


def store(manifest_path: Path, figures: dict[str, dict]) -> None:
    """The interval entries into the manifest's metrics, the point figures untouched."""
    with edited_manifest(manifest_path) as raw:
        raw["metrics"] = {**{k: v for k, v in raw.get("metrics", {}).items() if not _is_interval_key(k)},
                          **stored_metrics(figures)}


def _is_interval_key(key: str) -> bool:
    return key.endswith(("_ci95_low", "_ci95_high", "_ci95_n"))


def write_intervals(manifest_path: Path, card_path: Path, card_end: str, intervals: dict, measured: dict[str, float],
                    point_keys: dict[str, str], table: str) -> list[str]:
    """Store `intervals` (`{"figures", "bootstrap"}`) in the manifest and `table` in the card, unless a point
    figure moved from the stored one: then nothing is written and the moved figures are returned."""
    stored = json.loads(manifest_path.read_text()).get("metrics", {})
    moved = moved_points(stored, measured, intervals["figures"], point_keys)
    if moved:
        return moved
    store(manifest_path, intervals["figures"])
    card_path.write_text(place_table(card_path.read_text(), table, card_end))
    return []


def add_write_intervals_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--write-intervals", action="store_true",
                        help="add the 95 %% intervals to manifest.json and CARD.md, leaving the figures as they are")


def refused(moved: list[str]) -> bool:
    """Say why the intervals were not written (a figure moved from the card), if so."""
    if moved:
        print("intervals not written, figures moved from the card:\n" + "\n".join(moved), file=sys.stderr)
    return bool(moved)
