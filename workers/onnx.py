"""ONNX Runtime sessions: the one door through which worker code imports onnxruntime.

Sessions are created inside each worker process (after the fork), on the best provider available
(TensorRT, then CUDA, then CPU), and warmed with one run before the process counts as ready.
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

from app.metrics import BATCH_SIZE, MODEL_LOAD_SECONDS, MODEL_PROVIDER, MODEL_WARMUP_SECONDS
from app.model_repository import ModelVersion
from app.schemas.manifest import ModelManifest
from workers.batching import MicroBatcher

log = logging.getLogger(__name__)

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8, "int64": np.int64}


def import_onnxruntime() -> ModuleType:
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            "Running models needs ONNX Runtime: install medimg with the worker dependencies "
            "(`pip install medimg`, or `pip install medimg[gpu]` for onnxruntime-gpu)"
        ) from exc


def choose_providers(available: list[str], requested: list[str] | None = None) -> list[str]:
    wanted = requested or list(PREFERRED_PROVIDERS)
    chosen = [p for p in wanted if p in available]
    if "CPUExecutionProvider" not in chosen and "CPUExecutionProvider" in available:
        chosen.append("CPUExecutionProvider")
    return chosen


def missing_required_provider(models: list[LoadedModel], required: str | None) -> str | None:
    """Why these sessions do not satisfy MEDIMG_REQUIRE_PROVIDER, or None. ONNX Runtime falls back to the CPU
    without an error when CUDA or TensorRT fail to load, so only the providers a session got tell."""
    if not required:
        return None
    lacking = {f"{m.manifest.id}/{m.manifest.version}": m.providers for m in models if required not in m.providers}
    if not models:
        return f"MEDIMG_REQUIRE_PROVIDER={required}: no model was loaded"
    if lacking:
        return f"MEDIMG_REQUIRE_PROVIDER={required}, but sessions got other providers: {lacking}"
    return None


def providers_by_model(models: list[LoadedModel]) -> dict[str, list[str]]:
    """`model-id/version` -> the providers its session really got, first the one that runs most nodes."""
    return {f"{m.manifest.id}/{m.manifest.version}": list(m.providers) for m in models}


@dataclass
class LoadedModel:
    """A model version with its live session; `run` takes and returns arrays named as in the manifest."""

    version: ModelVersion
    session: object
    providers: list[str]
    load_seconds: float
    warmup_seconds: float = 0.0
    output_names: list[str] = field(default_factory=list)
    # The models named in the manifest's `requires` (earlier stages of a cascade), loaded and warm.
    requirements: dict[str, LoadedModel] = field(default_factory=dict)

    @property
    def manifest(self):
        return self.version.manifest

    def required(self, model_id: str) -> LoadedModel:
        """A model this one's pipeline also runs (a cascade stage), as named in the manifest's `requires`."""
        try:
            return self.requirements[model_id]
        except KeyError:
            raise KeyError(
                f"{self.manifest.id} does not require {model_id!r}; it requires {self.manifest.requires}"
            ) from None

    batcher: MicroBatcher | None = None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs one request; with micro-batching on, concurrent requests share one session run."""
        if self.batcher is not None:
            return self.batcher.run(feeds)
        return self._run_batch(feeds)

    def enable_batching(self, max_rows: int, max_wait_seconds: float, max_parallel: int = 1) -> None:
        """Concurrent calls share session runs (batches of up to `max_rows` when the batch axis is dynamic),
        and at most `max_parallel` runs execute at once, whatever the number of callers."""
        dynamic_batch = all(spec.shape and not isinstance(spec.shape[0], int) for spec in self.manifest.inputs)
        # A detector's boxes [N, 4 or 6] have no batch axis to split them back among callers by.
        dynamic_batch = dynamic_batch and self.manifest.decoding.kind != "box-detection"
        self.batcher = MicroBatcher(self._run_batch, max_rows if dynamic_batch else 1, max_wait_seconds,
                                    max_parallel)

    def _run_batch(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        first = next(iter(feeds.values()), None)
        if first is not None and getattr(first, "ndim", 0):
            BATCH_SIZE.labels(self.manifest.id).observe(first.shape[0])
        outputs = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outputs, strict=True))

    def warm_up(self) -> None:
        started = time.perf_counter()
        feeds = {}
        for spec in self.manifest.inputs:
            shape = [dim if isinstance(dim, int) and dim > 0 else 1 for dim in spec.shape]
            feeds[spec.name] = np.zeros(shape, dtype=NUMPY_DTYPES[spec.dtype])
        self.session.run(self.output_names, feeds)  # not self.run: warm-up runs are not batches of work
        self.warmup_seconds = time.perf_counter() - started
        MODEL_WARMUP_SECONDS.labels(self.manifest.id, self.providers[0] if self.providers else "").observe(
            self.warmup_seconds)


def load_model(version: ModelVersion, requested_providers: list[str] | None = None, threads: int = 0,
               thread_spinning: bool = False) -> LoadedModel:
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    # ONNX Runtime's default keeps idle intra-op threads busy-waiting for the next run; in a worker those
    # cycles belong to the decoding and preprocessing of the jobs behind it.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if thread_spinning else "0")
    providers = choose_providers(ort.get_available_providers(), requested_providers)
    started = time.perf_counter()
    session = ort.InferenceSession(str(version.onnx_path), sess_options=options, providers=providers)
    loaded = LoadedModel(
        version=version,
        session=session,
        providers=session.get_providers(),
        load_seconds=time.perf_counter() - started,
        output_names=[o.name for o in version.manifest.outputs],
    )
    mismatches = graph_mismatches(session, version.manifest)
    if mismatches:
        raise ValueError(f"{version.onnx_path} does not match its manifest: " + "; ".join(mismatches)
                         + " (`medimg models check` reports the whole folder)")
    MODEL_PROVIDER.labels(version.manifest.id, loaded.providers[0] if loaded.providers else "").set(1)
    MODEL_LOAD_SECONDS.labels(version.manifest.id, loaded.providers[0] if loaded.providers else "").observe(
        loaded.load_seconds)
    log.info(
        "model %s/%s loaded on %s in %.2fs",
        version.manifest.id, version.manifest.version, ",".join(loaded.providers), loaded.load_seconds,
    )
    return loaded


# ONNX Runtime's type strings for the dtypes a manifest may name.
ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "uint8": "tensor(uint8)",
             "int64": "tensor(int64)"}


def graph_mismatches(session, manifest: ModelManifest) -> list[str]:
    """Every way the graph's inputs and outputs differ from the manifest: names, dtypes, ranks, static sizes.

    Each message names the manifest field and what the graph has instead. An axis dynamic in either is not
    compared; a graph input the manifest does not feed is a mismatch (the model could not run).
    """
    problems = []
    for kind, specs, graph in (("inputs", manifest.inputs, session.get_inputs()),
                               ("outputs", manifest.outputs, session.get_outputs())):
        by_name = {node.name: node for node in graph}
        for index, spec in enumerate(specs):
            field = f"{kind}[{index}] {spec.name!r}"
            node = by_name.get(spec.name)
            if node is None:
                problems.append(f"{field}: no such {kind[:-1]} in the graph; the graph's {kind} are "
                                f"{sorted(by_name)}")
                continue
            if node.type != ORT_TYPES[spec.dtype]:
                problems.append(f"{field}: dtype {spec.dtype} in the manifest, {node.type} in the graph")
            graph_shape = list(node.shape)
            if len(graph_shape) != len(spec.shape):
                problems.append(f"{field}: rank {len(spec.shape)} ({spec.layout}, {spec.shape}) in the manifest, "
                                f"rank {len(graph_shape)} ({graph_shape}) in the graph")
                continue
            for axis, (want, have) in enumerate(zip(spec.shape, graph_shape, strict=True)):
                if isinstance(want, int) and isinstance(have, int) and want != have:
                    problems.append(f"{field}: axis {axis} ({spec.layout[axis]}) is {want} in the manifest, "
                                    f"{have} in the graph")
        if kind == "inputs":
            unfed = sorted(set(by_name) - {spec.name for spec in specs})
            if unfed:
                problems.append(f"inputs: the graph also needs {unfed}, which the manifest does not feed")
    return problems
