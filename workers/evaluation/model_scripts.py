"""What every reference model's `evaluate.py` and `train.py` (models/<model-id>/) share.

The model-specific part of a script — generating its data, running its model, the figures it reports — stays
in the script; this module holds the skeleton around it:

- `ModelFolder`: where the model's files are, and the folder put on `sys.path` so the script can import the
  modules beside it;
- `edited_manifest`: an edit of the stored manifest.json that changes the keys it touches and nothing else
  (key order, indentation and escaping as stored), checked against the schema before it is written;
  `write_new_manifest` for a trainer's fresh manifest, laid out the same way;
- `write_card_block`: the card's block between its markers (`<!-- metrics:begin ... -->` … `<!-- metrics:end -->`)
  replaced;
- `differences` and `report_drift`: `evaluate.py --check`, recomputed figures against the stored ones, with a
  report saying which figure moved, from what to what, against which tolerance.

A script starts by putting the checkout on `sys.path` (so the checkout's code is imported, not an installed
copy), and this module does the rest:

    REPO_ROOT = Path(__file__).resolve().parents[2]
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))

    from workers.evaluation.model_scripts import ModelFolder  # noqa: E402

    MODEL = ModelFolder.of_script(__file__)
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from app.model_repository import CARD_FILE, MANIFEST_FILE, MODEL_FILE, file_sha256, load_model_version
from app.schemas.manifest import ModelManifest
from workers.evaluation.model_folders import MODELS_DIR

# json.dumps layouts a stored manifest may have: the repository's (indent 2, non-ASCII escaped) first.
_LAYOUTS = tuple({"indent": indent, "ensure_ascii": ascii_only}
                 for indent in (2, None, 4) for ascii_only in (True, False))
# Figures compared by --check differ by float rounding at most when unchanged.
_ROUNDING = 1e-9


@dataclass(frozen=True)
class ModelFolder:
    """models/<model-id>/ and its served version folder (`version`)."""

    path: Path
    version: int = 1

    @classmethod
    def of_script(cls, script_file: str, imports_from: Path | None = None) -> ModelFolder:
        """The folder of `script_file` (a script's `__file__`). Its folder, or `imports_from` (the folder whose
        generators it uses), goes first on `sys.path`: the folders are not packages, the scripts import the
        modules beside them by name."""
        folder = cls(Path(script_file).resolve().parent)
        importable = str(imports_from or folder.path)
        if importable not in sys.path:
            sys.path.insert(0, importable)
        return folder

    @classmethod
    def named(cls, model_id: str) -> ModelFolder:
        return cls(MODELS_DIR / model_id)

    @property
    def model_id(self) -> str:
        return self.path.name

    @property
    def version_dir(self) -> Path:
        return self.path / str(self.version)

    @property
    def manifest_path(self) -> Path:
        return self.version_dir / MANIFEST_FILE

    @property
    def card_path(self) -> Path:
        return self.version_dir / CARD_FILE

    @property
    def onnx_path(self) -> Path:
        return self.version_dir / MODEL_FILE

    def manifest(self) -> ModelManifest:
        return ModelManifest.model_validate_json(self.manifest_path.read_text())

    def checked_manifest(self) -> ModelManifest:
        """The manifest, once the model file's sha256 is the one it states (else ModelRepositoryError)."""
        return load_model_version(self.version_dir).manifest

    def stored_metrics(self) -> dict[str, float]:
        """The manifest's metrics as stored (the JSON, not the schema's defaults)."""
        return json.loads(self.manifest_path.read_text()).get("metrics", {})


def sources_digest(sources: tuple[Path, ...], *settings: object) -> str:
    """A cache key for tensors made by the code in `sources` with `settings`: 12 hex digits that change when a
    source file or a setting does, so that stale cached tensors are never reused."""
    digest = hashlib.sha256()
    for path in sources:
        digest.update(file_sha256(path).encode())
    for setting in settings:
        digest.update(repr(setting).encode())
    return digest.hexdigest()[:12]


class ManifestLayoutError(ValueError):
    """A manifest not laid out as json.dumps writes it: an edit would reformat keys it does not touch."""


def _layout(text: str) -> dict:
    document = json.loads(text)
    for layout in _LAYOUTS:
        dumped = json.dumps(document, **layout)
        if text in (dumped, dumped + "\n"):
            return {**layout, "newline": text.endswith("\n")}
    raise ManifestLayoutError("not laid out as json.dumps writes it (indent 2, 4 or none): an edit would reformat "
                              "what it does not change; rewrite it once with write_new_manifest")


def _dumps(document: dict, layout: dict) -> str:
    text = json.dumps(document, indent=layout["indent"], ensure_ascii=layout["ensure_ascii"])
    return text + "\n" if layout["newline"] else text


@contextmanager
def edited_manifest(path: Path) -> Iterator[dict]:
    """The stored manifest as JSON, to edit in place; written back when the block ends without an error, once
    it validates, in the layout it was stored in, so that only the keys edited change (never a dump of the
    schema, which would add every field left at its default).

        with edited_manifest(MODEL.manifest_path) as raw:
            raw["metrics"] = {...}
    """
    text = path.read_text()
    try:
        layout = _layout(text)
    except ManifestLayoutError as exc:
        raise ManifestLayoutError(f"{path}: {exc}") from None
    document = json.loads(text)
    yield document
    ModelManifest.model_validate(document)
    path.write_text(_dumps(document, layout))


def write_new_manifest(path: Path, manifest: ModelManifest) -> None:
    """A trainer's fresh manifest: the fields it set (not the schema's defaults), laid out as stored ones are."""
    document = manifest.model_dump(mode="json", exclude_unset=True)
    path.write_text(_dumps(document, {"indent": 2, "ensure_ascii": True, "newline": True}))


def replace_block(text: str, begin: str, end: str, block: str) -> str:
    """`text` with its part from the marker `begin` to the next `end` replaced by `block`, which must start and
    end with the same markers so that the next write finds it again."""
    if not (block.startswith(begin) and block.endswith(end)):
        raise ValueError(f"a card block must run from {begin!r} to {end!r}")
    start = text.find(begin)
    stop = text.find(end, start + len(begin)) if start >= 0 else -1
    if stop < 0:
        raise ValueError(f"no block from {begin!r} to {end!r}")
    return text[:start] + block + text[stop + len(end):]


def write_card_block(card_path: Path, begin: str, end: str, block: str) -> None:
    """The card's block from `begin` to `end` (markers included) replaced by `block`."""
    try:
        card_path.write_text(replace_block(card_path.read_text(), begin, end, block))
    except ValueError as exc:
        raise ValueError(f"{card_path}: {exc}") from None


def differences(stored: Mapping[str, float], measured: Mapping[str, float],
                tolerance: float | Callable[[str], float], missing: str = "not in the manifest") -> list[str]:
    """One line per measured figure more than its tolerance (a number, or one per key) from the stored one, or
    not stored at all (then `missing` says so, and what writes it)."""
    lines = []
    for key, value in measured.items():
        allowed = tolerance(key) if callable(tolerance) else tolerance
        if stored.get(key) is None:
            lines.append(f"{key}: measured {_figure(value)}, {missing}")
        elif abs(stored[key] - value) > allowed + _ROUNDING:
            lines.append(f"{key}: manifest {stored[key]}, measured {_figure(value)} "
                         f"({value - stored[key]:+.4f}, tolerance {allowed})")
    return lines


def _figure(value: float) -> str:
    return f"{value:.4f}" if isinstance(value, float) and not value.is_integer() else str(value)


def report_drift(problems: list[str], manifest_path: Path) -> int:
    """`evaluate.py --check`'s report on stderr; the exit status (1 when a figure moved)."""
    if problems:
        print(f"DRIFT: {len(problems)} figure(s) differ from {manifest_path}:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"no drift: every figure within tolerance of {manifest_path}", file=sys.stderr)
    return 0
