"""COVID-19 lesion segmentation on one CT series: lesion masks on the source grid, volumes, lung involvement.

load (CT series → HU volume + geometry, `workers.imaging.ct_series`) → lungs (classical mask, left and right,
`workers.imaging.lungs`) → preprocess (per slice: the slice and its neighbours as channels, the manifest's
HU window, resized in-plane to the manifest's pixel spacing or target size) → infer (the whole slice, or
overlapping patches of the manifest's patch size blended back; as many per run as the manifest's batch size)
→ decode (softmax, argmax resized back to the source rows and columns: labels
background / ground-glass / consolidation; small components removed; only lesions in the lungs kept)
→ outputs (figures from the true voxel spacing; NIfTI label volume; mask and overlay PNG per affected slice;
a display PNG per slice for the review page).

The composition and the decode live here; the 2.5D slice stacks in `workers.imaging.slice_stacks` (shared with
training), the figures in `covid_figures`, the files in `covid_outputs`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from app.errors import ModelError
from app.schemas.manifest import CodedConcept, ModelManifest, SegmentCoding
from app.schemas.options import CovidLesionSegmentationOptions
from app.schemas.tasks import TaskName
from workers.decoding import activate
from workers.imaging.ct_series import load_ct_series
from workers.imaging.lungs import LungMask, component_sizes, label_compact, patient_x, segment_lungs
from workers.imaging.slice_stacks import model_plane, model_slices, resize_plane, stack_neighbours
from workers.onnx import LoadedModel
from workers.pipelines.base import JobContext, JobInput, PipelineOutput, StageTimer
from workers.pipelines.covid_figures import CONSOLIDATION, GGO, build_result
from workers.pipelines.covid_outputs import write_artifacts
from workers.sliding_window import sliding_window

LUNGS = "lungs"
LUNGS_SEGMENT = SegmentCoding(
    label="lungs", category=CodedConcept(value="123037004", scheme="SCT", meaning="Anatomical Structure"),
    type=CodedConcept(value="39607008", scheme="SCT", meaning="Lung"), color_rgb=(80, 160, 255),
)
DEFAULT_BATCH = 8


class CovidLesionSegmentationPipeline:
    task = TaskName.COVID_LESION_SEGMENTATION
    stages = ("load", "lungs", "infer", "decode", "outputs")

    def run(self, inputs: list[JobInput], options: CovidLesionSegmentationOptions, model: LoadedModel,
            stages: StageTimer, context: JobContext | None = None) -> PipelineOutput:
        manifest = model.manifest
        with stages("load"):
            ct = load_ct_series([i.path for i in inputs if i.format == "dicom"], options.series_instance_uid,
                                manifest.accepts.modalities or ("CT",), task=f"task {self.task.value!r}")
        with stages("lungs"):
            lungs = segment_lungs(ct.hu, ct.affine, ct.spacing_mm)
        with stages("infer"):
            raw = predict_labels(ct.hu, ct.spacing_mm, manifest, onnx_runner(model), ct.geometry.slice_positions_mm)
        with stages("decode"):
            labels, lungs = decode_labels(raw, lungs, ct.affine, manifest)  # in place: `raw` is `labels` now
            result = build_result(ct, labels, lungs, manifest)
        with stages("outputs"):
            artifacts = write_artifacts(ct, labels, result.affected_slices)
        masks = SegmentMasks(labels, lungs, manifest)
        return PipelineOutput(result=result, artifacts=artifacts, masks=masks,
                              mask_sop_instance_uids=list(ct.sop_instance_uids), segments=masks.codings(manifest))


class SegmentMasks(Mapping[str, np.ndarray]):
    """The DICOM SEG's boolean masks by segment label, each made when read.

    The SEG is built after the pipeline returns, when the HU volume is gone; until then the job holds the two
    label volumes only, not three more full-size masks beside them.
    """

    def __init__(self, labels: np.ndarray, lungs: LungMask, manifest: ModelManifest) -> None:
        self._make: dict[str, Callable[[], np.ndarray]] = {
            manifest.class_names[GGO]: lambda: labels == GGO,
            manifest.class_names[CONSOLIDATION]: lambda: labels == CONSOLIDATION,
            LUNGS: lambda: lungs.both,
        }

    def codings(self, manifest: ModelManifest) -> dict[str, SegmentCoding]:
        """The model's classes as its manifest codes them; the lungs (segmented here, not by the model) as ours."""
        coded = {**(manifest.decoding.segments or {}), LUNGS: LUNGS_SEGMENT}
        return {name: coded[name] for name in self._make if name in coded}

    def __getitem__(self, label: str) -> np.ndarray:
        return self._make[label]()

    def __iter__(self) -> Iterator[str]:
        return iter(self._make)

    def __len__(self) -> int:
        return len(self._make)


# --- steps ----------------------------------------------------------------------------------------


def onnx_runner(model: LoadedModel) -> Callable[[np.ndarray], np.ndarray]:
    input_name, output_name = model.manifest.inputs[0].name, model.manifest.outputs[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        return model.run({input_name: batch})[output_name]

    return run


def predict_labels(hu: np.ndarray, spacing_mm: tuple[float, float, float], manifest: ModelManifest,
                   run: Callable[[np.ndarray], np.ndarray], positions_mm: np.ndarray | None = None) -> np.ndarray:
    """Labels 0/1/2 on the source grid (uint8, same shape as `hu`): each voxel's most probable class."""
    labels = np.empty(hu.shape, np.uint8)
    for index, probability in slice_probabilities(hu, spacing_mm, manifest, run, positions_mm):
        labels[index] = np.argmax(probability, axis=0)
    return labels


def slice_probabilities(hu: np.ndarray, spacing_mm: tuple[float, float, float], manifest: ModelManifest,
                        run: Callable[[np.ndarray], np.ndarray],
                        positions_mm: np.ndarray | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(slice index, float32 class probabilities resized back to the slice's rows and columns), slice by slice,
    so that no caller need hold the probabilities of a whole volume.

    Each slice, with its neighbours as channels (`stack_neighbours`), is resized to the model's plane
    (`model_plane`), then run whole or, when the manifest gives `patch_size`, as overlapping patches blended
    back (`sliding_window`). `spacing_mm` is the series' (column, row, slice) spacing; `positions_mm` each
    slice's distance along the normal from slice 0 (None: evenly spaced at the slice spacing).
    """
    spec = manifest.preprocessing
    channels = int(manifest.inputs[0].shape[1])
    batch_size = spec.batch_size or DEFAULT_BATCH
    plane = model_plane(hu.shape[1:], spacing_mm, manifest)
    patch = tuple(int(v) for v in (spec.patch_size or plane))
    if len(patch) != 2:
        raise ModelError(f"{manifest.id}: patch_size {list(patch)} is not a 2-D patch for slice-wise inference")
    if positions_mm is None:
        positions_mm = np.arange(hu.shape[0], dtype=np.float64) * spacing_mm[2]
    n_classes = len(manifest.class_names)

    def predict(batch: np.ndarray) -> np.ndarray:
        logits = run(batch)
        if logits.shape[0] != batch.shape[0] or logits.shape[1] != n_classes:
            raise ModelError(f"the model returned {logits.shape} for a batch of {batch.shape[0]} inputs")
        return activate(logits, manifest.decoding, axis=1).astype(np.float32)

    small = model_slices(hu, manifest, plane)
    for first in range(0, hu.shape[0], batch_size):
        indices = np.arange(first, min(first + batch_size, hu.shape[0]))
        stacked = stack_neighbours(small, indices, channels, positions_mm, spec.slice_offsets_mm)
        probability = sliding_window(stacked, patch, spec.patch_overlap or 0.0, predict, batch_size)
        for offset, index in enumerate(indices):
            yield int(index), resize_plane(probability[offset], hu.shape[1:])


def decode_labels(raw: np.ndarray, lungs: LungMask, affine: np.ndarray,
                  manifest: ModelManifest) -> tuple[np.ndarray, LungMask]:
    """Small lesion components removed; lesions kept only where they belong to the lungs.

    The classical lung mask is air, so dense consolidation against the chest wall falls outside it: a lesion
    component that touches the lung mask is kept whole and added to the lung it lies in (by patient x);
    components not touching the lungs are dropped. Returns the labels and the lungs so extended.

    In place, so that a job holds no second copy of either volume: the labels returned are `raw` with the
    dropped components cleared, and the lungs returned share `lungs.labels`, extended. Components are
    labelled only within the lesions' bounding box, and the rest goes slice by slice.
    """
    box = _lesion_box(raw)
    if box is None:
        return raw, lungs
    box_labels, box_lungs = raw[box], lungs.labels[box]
    components, count = label_compact(box_labels, structure=np.ones((3, 3, 3), bool))
    min_voxels = manifest.decoding.min_component_voxels or 0
    keep = _touching_lungs(components, count, lungs.labels, box)
    keep &= component_sizes(components, count) >= max(min_voxels, 1)
    keep[0] = False
    midline = _midline(lungs, affine)  # of the lungs as found: before any lesion extends them
    origin = [axis.start for axis in box]
    for k, plane in enumerate(components):
        kept = keep[plane]
        box_labels[k][~kept] = 0
        r, c = np.nonzero(kept & (box_lungs[k] == 0))
        if r.size:
            x = patient_x(affine, origin[0] + k, r + origin[1], c + origin[2])
            box_lungs[k][r, c] = np.where(x > midline, LungMask.LEFT, LungMask.RIGHT)
    return raw, lungs


def _lesion_box(raw: np.ndarray) -> tuple[slice, slice, slice] | None:
    """The smallest box holding every nonzero voxel of the label volume; None when there is none."""
    from scipy import ndimage

    boxes = [box for box in ndimage.find_objects(raw) if box is not None]
    if not boxes:
        return None
    return tuple(slice(min(b[axis].start for b in boxes), max(b[axis].stop for b in boxes)) for axis in range(3))


def _touching_lungs(components: np.ndarray, count: int, lung_labels: np.ndarray,
                    box: tuple[slice, slice, slice]) -> np.ndarray:
    """Which components (labelled within `box`) touch the lungs grown by one voxel, 6-connected.

    Slice by slice: in-plane the lungs grow within a one-pixel margin around the box, across slices by the
    neighbouring slices themselves, so no whole-volume dilation is needed.
    """
    from scipy import ndimage

    planes, rows, columns = box
    outer_rows = slice(max(rows.start - 1, 0), rows.stop + 1)
    outer_columns = slice(max(columns.start - 1, 0), columns.stop + 1)
    inner = (slice(rows.start - outer_rows.start, rows.stop - outer_rows.start),
             slice(columns.start - outer_columns.start, columns.stop - outer_columns.start))
    cross = ndimage.generate_binary_structure(2, 1)
    touching = np.zeros(count + 1, bool)
    for k, index in enumerate(range(planes.start, planes.stop)):
        near = ndimage.binary_dilation(lung_labels[index, outer_rows, outer_columns] > 0, cross)[inner]
        for neighbour in (index - 1, index + 1):
            if 0 <= neighbour < lung_labels.shape[0]:
                near |= lung_labels[neighbour, rows, columns] > 0
        touching[components[k][near]] = True
    return touching


def _midline(lungs: LungMask, affine: np.ndarray) -> float:
    right_x = _mean_x(lungs.labels, LungMask.RIGHT, affine)
    left_x = _mean_x(lungs.labels, LungMask.LEFT, affine)
    return (right_x + left_x) / 2 if right_x is not None and left_x is not None else 0.0


def _mean_x(lung_labels: np.ndarray, side: int, affine: np.ndarray) -> float | None:
    s, r, c = np.nonzero(lung_labels[:, ::4, ::4] == side)
    if s.size == 0:
        return None
    return float(patient_x(affine, s, r * 4, c * 4).mean())


@dataclass(frozen=True)
class ArrayCase:
    """Arrays enough to run the steps without DICOM (evaluation, benchmarks)."""

    hu: np.ndarray
    affine: np.ndarray
    spacing_mm: tuple[float, float, float]


def segment_arrays(case: ArrayCase, manifest: ModelManifest,
                   run: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, LungMask]:
    """lungs → infer → decode on arrays: the pipeline's steps in its order."""
    lungs = segment_lungs(case.hu, case.affine, case.spacing_mm)
    raw = predict_labels(case.hu, case.spacing_mm, manifest, run)
    return decode_labels(raw, lungs, case.affine, manifest)
