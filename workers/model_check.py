"""`medimg models check DIR`: will this model folder serve, and if not, exactly why not.

Steps, each timed: the manifest against its schema (and the folder's id/version), the sha256 of model.onnx,
the graph's opset imports against the installed ONNX Runtime, the graph's inputs and outputs against the
manifest (names, dtypes, ranks, static sizes: the same comparison the workers make at load), and one inference
on a synthetic input of the manifest's shape through the decoding kind the manifest names. A failed step says
which field is wrong and what the graph has instead; the steps after a failure that needs its result are
skipped.
"""

from __future__ import annotations

import importlib
import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from app.model_repository import MANIFEST_FILE, MODEL_FILE, file_sha256
from app.schemas.manifest import ModelManifest
from workers.decoding import Boxes, activate, decode_boxes, multilabel_decisions
from workers.onnx import NUMPY_DTYPES, graph_mismatches, import_onnxruntime

# ONNX Runtime's refusal of a newer opset ends "Current official support for domain ai.onnx is till opset 28."
_SUPPORTED_OPSET = re.compile(r"support for domain (\S*) is till opset (\d+)")


class StepFailed(Exception):
    pass


@dataclass
class Step:
    name: str
    status: str  # "ok", "failed" or "skipped"
    detail: str
    seconds: float = 0.0


@dataclass
class ModelCheck:
    folder: Path
    steps: list[Step] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(step.status != "failed" for step in self.steps)

    def render(self) -> str:
        lines = [f"{self.folder}: {'PASS' if self.passed else 'FAIL'}"]
        for step in self.steps:
            mark = {"ok": "ok  ", "failed": "FAIL", "skipped": "skip"}[step.status]
            timing = f"{step.seconds * 1000:8.1f} ms" if step.status != "skipped" else " " * 11
            detail_lines = step.detail.splitlines() or [""]
            lines.append(f"  {mark} {step.name:10} {timing}  {detail_lines[0]}")
            lines.extend(f"  {'':4} {'':10} {'':11}  {line}" for line in detail_lines[1:])
        return "\n".join(lines)


def check_folders(paths: Iterable[Path]) -> list[ModelCheck]:
    """A <model-id>/<version> folder is checked as it is; a model folder or a repository, every version in it."""
    checks = []
    for path in paths:
        checks.extend(check_folder(folder) for folder in _version_folders(Path(path)))
    return checks


def _version_folders(path: Path) -> list[Path]:
    if (path / MANIFEST_FILE).is_file() or not path.is_dir():
        return [path]
    found = sorted(p.parent for p in path.glob(f"*/{MANIFEST_FILE}"))
    found += sorted(p.parent for p in path.glob(f"*/*/{MANIFEST_FILE}"))
    return found or [path]


def check_folder(folder: Path) -> ModelCheck:
    check = ModelCheck(folder)
    context: dict = {}
    steps: list[tuple[str, Callable[[Path, dict], str]]] = [
        ("manifest", _manifest), ("sha256", _sha256), ("opset", _opset), ("graph", _graph), ("inference", _inference),
    ]
    needs = {"sha256": ("manifest",), "graph": ("manifest", "opset"), "inference": ("graph",)}
    for name, run in steps:
        failed = [s.name for s in check.steps if s.name in needs.get(name, ()) and s.status != "ok"]
        if failed:
            check.steps.append(Step(name, "skipped", f"needs a passing {failed[0]} step"))
            continue
        started = time.perf_counter()
        try:
            detail, status = run(folder, context), "ok"
        except StepFailed as exc:
            detail, status = str(exc), "failed"
        check.steps.append(Step(name, status, detail, time.perf_counter() - started))
    return check


# --- steps ----------------------------------------------------------------------------------------


def _manifest(folder: Path, context: dict) -> str:
    path = folder / MANIFEST_FILE
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise StepFailed(f"{path} cannot be read ({exc.strerror or exc})") from exc
    try:
        manifest = ModelManifest.model_validate_json(raw)
    except ValidationError as exc:
        raise StepFailed("\n".join(_validation_lines(exc))) from exc
    if manifest.id != folder.parent.name or str(manifest.version) != folder.name:
        raise StepFailed(f"id/version {manifest.id}/{manifest.version}: the folder is {folder.parent.name}/"
                         f"{folder.name}; the repository serves <id>/<version>/ folders named as the manifest says")
    context["manifest"] = manifest
    return f"{manifest.id} version {manifest.version}, task {manifest.task.value}, decoding {manifest.decoding.kind}"


def _validation_lines(exc: ValidationError) -> list[str]:
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(document)"
        given = error.get("input")
        shown = json.dumps(given)[:80] if isinstance(given, str | int | float | bool | list) else None
        lines.append(f"{where}: {error['msg']}" + (f" (the manifest has {shown})" if shown is not None else ""))
    return lines


def _sha256(folder: Path, context: dict) -> str:
    manifest: ModelManifest = context["manifest"]
    path = folder / MODEL_FILE
    if not path.is_file():
        raise StepFailed(f"{path} is missing")
    actual = file_sha256(path)
    if actual != manifest.sha256:
        raise StepFailed(f"sha256: the manifest says {manifest.sha256}, {MODEL_FILE} is {actual} (stale manifest, "
                         "or the wrong file)")
    return actual


def _opset(folder: Path, context: dict) -> str:
    """Reads the opset imports (with onnx, when installed) and opens the session, which is where ONNX Runtime
    refuses an opset newer than it supports; any other load failure is the graph step's to report."""
    ort = import_onnxruntime()
    opsets: dict[str, int] = {}
    read = f"not read (the onnx package is not installed); ONNX Runtime {ort.__version__}"
    try:
        onnx = importlib.import_module("onnx")
    except ImportError:
        onnx = None
    if onnx is not None:
        try:
            model = onnx.load(str(folder / MODEL_FILE), load_external_data=False)
        except Exception as exc:  # a corrupt file: the graph step says what ONNX Runtime makes of it
            raise StepFailed(f"{MODEL_FILE} is not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
        opsets = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
        read = ", ".join(f"{domain} {version}" for domain, version in sorted(opsets.items())) + \
            f" (IR version {model.ir_version}; ONNX Runtime {ort.__version__})"
    try:
        context["session"] = ort.InferenceSession(str(folder / MODEL_FILE), providers=["CPUExecutionProvider"])
    except Exception as exc:
        supported = _SUPPORTED_OPSET.search(str(exc))
        if supported is None:
            context["load_error"] = str(exc)
            return read
        domain, limit = supported.group(1), int(supported.group(2))
        used = opsets.get(domain, "(unread)")
        raise StepFailed(f"the graph imports {domain} opset {used}; ONNX Runtime {ort.__version__} supports "
                         f"{domain} up to opset {limit}: re-export with opset <= {limit} or upgrade ONNX "
                         "Runtime") from exc
    return read


def _graph(folder: Path, context: dict) -> str:
    manifest: ModelManifest = context["manifest"]
    if "load_error" in context:
        raise StepFailed(f"ONNX Runtime cannot load the graph: {context['load_error'][-400:]}")
    session = context["session"]
    problems = graph_mismatches(session, manifest)
    if problems:
        del context["session"]
        raise StepFailed("\n".join(problems))
    inputs = ", ".join(f"{i.name} {i.type} {i.shape}" for i in session.get_inputs())
    outputs = ", ".join(f"{o.name} {o.type} {o.shape}" for o in session.get_outputs())
    return f"in: {inputs}; out: {outputs}"


def _inference(folder: Path, context: dict) -> str:
    manifest: ModelManifest = context["manifest"]
    session = context["session"]
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in manifest.inputs:
        shape = [dim if isinstance(dim, int) and dim > 0 else 1 for dim in spec.shape]
        feeds[spec.name] = rng.standard_normal(shape).astype(NUMPY_DTYPES[spec.dtype])
    names = [spec.name for spec in manifest.outputs]
    started = time.perf_counter()
    try:
        arrays = dict(zip(names, session.run(names, feeds), strict=True))
    except Exception as exc:
        raise StepFailed(f"the run on a synthetic input failed: {str(exc)[-400:]}") from exc
    run_ms = (time.perf_counter() - started) * 1000
    for index, spec in enumerate(manifest.outputs):
        got = arrays[spec.name].shape
        if len(got) != len(spec.shape) or any(isinstance(w, int) and w != g for w, g in zip(spec.shape, got)):
            raise StepFailed(f"outputs[{index}] {spec.name!r}: the run gave shape {list(got)}, the manifest says "
                             f"{spec.shape}")
    try:
        summary = decode_summary(arrays, manifest)
    except Exception as exc:
        raise StepFailed(f"decoding {manifest.decoding.kind}: {exc}") from exc
    shapes = ", ".join(f"{name} {list(array.shape)}" for name, array in arrays.items())
    return f"run {run_ms:.1f} ms on {', '.join(f'{n} {list(a.shape)}' for n, a in feeds.items())} -> {shapes}; " \
        f"decode: {summary}"


def decode_summary(outputs: dict, manifest: ModelManifest) -> str:
    """One synthetic item through the decoding kind's own code, summarised in a line."""
    decoding = manifest.decoding
    first = outputs[manifest.outputs[0].name]
    if decoding.kind == "box-detection":
        return box_summary(decode_boxes(outputs, manifest), manifest)
    if decoding.kind == "multilabel-sigmoid":
        decisions = multilabel_decisions(first[0], manifest)
        return ", ".join(f"{d.name} {d.probability:.3f} (>= {d.threshold:g}: {d.present})" for d in decisions)
    if decoding.kind in ("ordinal-grade", "binary-probability"):
        probabilities = activate(first[0], decoding)
        if decoding.positive_classes and max(decoding.positive_classes) >= probabilities.shape[-1]:
            raise ValueError(f"decoding.positive_classes {decoding.positive_classes} exceed the "
                             f"{probabilities.shape[-1]} output values")
        return "probabilities " + ", ".join(f"{p:.3f}" for p in np.ravel(probabilities))
    # Segmentation kinds: per-voxel class scores along the channel axis.
    probabilities = activate(first, decoding, axis=1)
    if decoding.positive_classes and max(decoding.positive_classes) >= first.shape[1]:
        raise ValueError(f"decoding.positive_classes {decoding.positive_classes} exceed the {first.shape[1]} "
                         "output channels")
    return f"{first.shape[1]} channel(s) over {list(first.shape[2:])}, probabilities " \
        f"{probabilities.min():.3f}..{probabilities.max():.3f}"


def box_summary(boxes: Boxes, manifest: ModelManifest) -> str:
    """How many boxes, where they lie in the model's input grid (the pixel or voxel index ranges the pipelines
    map back), and the best score; boxes all within 0..1 are named as the normalised coordinates they may be."""
    summary = f"{len(boxes)} box(es) in {manifest.decoding.box_format}"
    if not len(boxes):
        return summary
    dims = boxes.low.shape[1]
    names = ("slices", "rows", "columns")[-dims:]
    sizes = manifest.inputs[0].shape[-dims:]
    spans = ", ".join(f"{name} {low:.1f}..{high:.1f} of {size}" for name, low, high, size in
                      zip(names, boxes.low.min(axis=0), boxes.high.max(axis=0), sizes, strict=True))
    summary += f" spanning {spans} (input indices), best score {boxes.scores.max():.3f}"
    if boxes.high.max() <= 1.0 and any(isinstance(size, int) and size > 1 for size in sizes):
        summary += "; every box lies within 0..1: box-detection reads pixel index ranges of the input, not " \
                   "normalised coordinates"
    return summary
