"""A reference model's figures on further sets — an untouched test split, an external set — on its card.

A card's first metrics block is its original held-out split. Issue #21 adds, per model, figures on sets read
once after the model was fixed: an *untouched* test split (new seeds of the training generator) and an
*external* set (an independently written generator). Each set's figures (`{"value", "ci95", "n"}` from
`intervals.py`) are stored in the manifest's `metrics` under the set's prefix — `<prefix>_<metric>`, with
`_ci95_low` / `_ci95_high` / `_ci95_n` — so `evaluate.py --check` compares them as it compares the
original ones, and the card gets one block per set between `<!-- <prefix>:begin -->` and `<!-- <prefix>:end -->`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from workers.evaluation import card as model_card
from workers.evaluation.model_scripts import differences, edited_manifest, replace_block


@dataclass(frozen=True)
class ValidationSet:
    prefix: str  # "untouched_test" or "external"
    title: str  # the card block's heading
    description: str  # what the set is, how it was made, which seeds

    @property
    def begin(self) -> str:
        return f"<!-- {self.prefix}:begin (written by evaluate.py --write-sets) -->"

    @property
    def end(self) -> str:
        return f"<!-- {self.prefix}:end -->"


def with_point_figures(results: dict, keys: tuple[str, ...], n: int) -> dict[str, dict]:
    """`results["intervals"]["figures"]` and, without intervals, the point figures `keys` of `results`."""
    from workers.evaluation.intervals import figure

    return {**results["intervals"]["figures"], **{key: figure(results[key], None, n) for key in keys}}


def stored_figures(validation_set: ValidationSet, figures: dict[str, dict]) -> dict[str, float]:
    """The manifest entries: each figure's value and interval bounds under the set's prefix."""
    prefixed = {f"{validation_set.prefix}_{key}": figure for key, figure in figures.items()}
    values = {key: round(figure["value"], 4) for key, figure in prefixed.items() if figure["value"] is not None}
    return {**values, **model_card.stored_metrics(prefixed)}


def drift(stored: dict[str, float], validation_set: ValidationSet, figures: dict[str, dict],
          tolerance: float) -> list[str]:
    """Values and bounds recomputed more than `tolerance` from the manifest's (or missing from it)."""
    prefixed = {f"{validation_set.prefix}_{key}": figure for key, figure in figures.items()}
    values = {key: figure["value"] for key, figure in prefixed.items() if figure["value"] is not None}
    return (differences(stored, values, tolerance, "not in the manifest (evaluate.py --write-sets stores it)")
            + model_card.drift(stored, prefixed, tolerance))


def drift_all(stored: dict[str, float], sets: dict[str, ValidationSet], figures: dict[str, dict[str, dict]],
              tolerance: float) -> list[str]:
    """`drift` over several sets, `figures` keyed as `sets` is."""
    return [problem for key, validation_set in sets.items()
            for problem in drift(stored, validation_set, figures[key], tolerance)]


def block(validation_set: ValidationSet, figures: dict[str, dict], bootstrap: dict, over: str,
          notes: str = "") -> str:
    table = model_card.interval_table(figures, bootstrap, over).strip("\n")
    parts = [validation_set.begin, f"### {validation_set.title}", "", validation_set.description, "", table]
    if notes:
        parts += ["", notes]
    return "\n".join([*parts, validation_set.end])


def write(manifest_path: Path, card_path: Path, validation_set: ValidationSet, figures: dict[str, dict],
          text: str, after: str) -> None:
    """Store the set's figures in the manifest (replacing the set's earlier ones) and `text` in the card,
    replacing the set's earlier block, or else placed right after the line `after` first ends."""
    prefix = f"{validation_set.prefix}_"
    with edited_manifest(manifest_path) as raw:
        raw["metrics"] = {**{k: v for k, v in raw.get("metrics", {}).items() if not k.startswith(prefix)},
                          **stored_figures(validation_set, figures)}
    card = card_path.read_text()
    if validation_set.begin in card:
        card = replace_block(card, validation_set.begin, validation_set.end, text)
    else:
        head, tail = card.split(after, 1)
        card = head + after + "\n\n" + text + tail
    card_path.write_text(card)


def write_all(manifest_path: Path, card_path: Path, sets: dict[str, ValidationSet], figures: dict[str, dict[str, dict]],
              bootstrap: dict, over: str, after: str, notes: dict[str, str] | None = None) -> None:
    """`write` for several sets, keyed alike, their blocks in the order of `sets`, the first after `after`."""
    for key, validation_set in sets.items():
        text = block(validation_set, figures[key], bootstrap, over, (notes or {}).get(key, ""))
        write(manifest_path, card_path, validation_set, figures[key], text, after)
        after = validation_set.end


def kept_figures(metrics: dict[str, float], sets) -> dict[str, float]:
    """The `sets`' entries in a manifest's metrics: a rewrite of the headline figures (`evaluate.py --write`) keeps
    them, since only --write-sets computes them."""
    prefixes = tuple(f"{validation_set.prefix}_" for validation_set in sets)
    return {key: value for key, value in metrics.items() if key.startswith(prefixes)}
