"""COVID-19 lesion segmentation on one CT series: lesion masks on the source grid, volumes, lung involvement.

load (CT series → HU volume + geometry, `workers.imaging.ct_series`) → lungs (classical mask, left and right,
`workers.imaging.lungs`) → preprocess (per slice: the slice and its neighbours as channels, the manifest's
HU window, resized in-plane to the manifest's pixel spacing or target size) → infer (the whole slice, or
overlapping patches of the manifest's patch size blended back; as many per run as the manifest's batch size)
→ decode (softmax, argmax resized back to the source rows and columns: labels
background / ground-glass / consolidation; small components removed; only lesions in the lungs kept)
→ outputs (figures from the true voxel spacing; NIfTI label volume; mask and overlay PNG per affected slice;
a display PNG per slice for the review page).
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from app.errors import ModelError
from app.schemas.manifest import CodedConcept, ModelManifest, SegmentCoding
from app.schemas.options import CovidLesionSegmentationOptions
from app.schemas.results import (
    CovidLesionSegmentationResult,
    InvolvementByZone,
    InvolvementPercent,
    LesionVolumes,
    LungVolumes,
    ZoneInvolvement,
)
from app.schemas.quality import Quality, SegmentationUncertainty
from app.schemas.tasks import TaskName
from workers import uncertainty
from workers.decoding import activate
from workers.imaging.ct_display import display_slices, lung_window
from workers.imaging.ct_series import CTVolume, load_ct_series
from workers.imaging.slice_stacks import model_plane, model_slices, resize_plane, stack_neighbours
from workers.imaging.lungs import LungMask, component_sizes, label_compact, patient_x, segment_lungs
from workers.onnx import LoadedModel
from workers.pipelines.base import ArtifactOutput, JobContext, JobInput, PipelineOutput, StageTimer, ungradable
from workers.quality.ct import check_ct
from workers.sliding_window import sliding_window

BACKGROUND, GGO, CONSOLIDATION = 0, 1, 2
LUNGS = "lungs"
LUNGS_SEGMENT = SegmentCoding(
    label="lungs", category=CodedConcept(value="123037004", scheme="SCT", meaning="Anatomical Structure"),
    type=CodedConcept(value="39607008", scheme="SCT", meaning="Lung"), color_rgb=(80, 160, 255),
)
DEFAULT_BATCH = 8
OVERLAY_COLOURS = {GGO: (255, 200, 0), CONSOLIDATION: (230, 30, 30)}
OVERLAY_ALPHA = 0.45
MASK_GREY = {GGO: 128, CONSOLIDATION: 255}
NIFTI_NAME = "lesions.nii.gz"
SLICES_NAME = "slices.json"
UNCERTAINTY_NIFTI_NAME = "uncertainty.nii.gz"
UNCERTAINTY_PNG_NAME = "uncertainty.png"
UNCERTAIN_COLOUR = (0, 230, 255)


class CovidLesionSegmentationPipeline:
    task = TaskName.COVID_LESION_SEGMENTATION
    stages = ("load", "quality", "lungs", "infer", "uncertainty", "decode", "outputs")

    def run(self, inputs: list[JobInput], options: CovidLesionSegmentationOptions, model: LoadedModel,
            stages: StageTimer, context: JobContext | None = None) -> PipelineOutput:
        manifest = model.manifest
        with stages("load"):
            ct = load_ct_series([i.path for i in inputs if i.format == "dicom"], options.series_instance_uid,
                                manifest.accepts.modalities or ("CT",), task=f"task {self.task.value!r}")
        with stages("quality"):
            quality = check_ct(ct.hu, ct.geometry, manifest.quality.ct)
        if not quality.gradable:
            return ungradable(quality, manifest)
        with stages("lungs"):
            lungs = segment_lungs(ct.hu, ct.affine, ct.spacing_mm)
        with stages("infer"):
            raw = predict_labels(ct.hu, ct.spacing_mm, manifest, onnx_runner(model), ct.geometry.slice_positions_mm)
        disagreement, augmentations = None, []
        if uncertainty.wanted(options.uncertainty, manifest.uncertainty, volume=True):
            with stages("uncertainty"):
                disagreement, augmentations = lesion_disagreement(ct, raw, manifest, onnx_runner(model))
        with stages("decode"):
            labels, lungs = decode_labels(raw, lungs, ct.affine, manifest)  # in place: `raw` is `labels` now
            result = build_result(ct, labels, lungs, manifest, quality)
            if disagreement is not None:
                result.uncertainty = uncertainty.segmentation(
                    disagreement, int(np.count_nonzero(labels)), float(np.prod(ct.spacing_mm)) / 1000.0, augmentations)
        with stages("outputs"):
            artifacts = write_artifacts(ct, labels, result.affected_slices)
            if disagreement is not None:
                artifacts += uncertainty_artifacts(ct, labels, disagreement, len(augmentations) - 1)
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


# --- figures --------------------------------------------------------------------------------------

DEFINITIONS = {
    "lung_volume_ml": "Volume of each lung's mask (air-density lung found by thresholding at -320 HU, holes "
    "filled, plus any lesion touching it), from the series' voxel spacing.",
    "lesion_volume_ml": "Volume of voxels labelled ground-glass opacity or consolidation inside the lungs; total "
    "is their sum.",
    "involvement_percent": "Lesion volume in a lung as a percentage of that lung's volume; total is over both "
    "lungs.",
    "involvement_by_zone": "The same percentage within the upper, middle and lower thirds of each lung's height "
    "along the patient's superior-inferior axis (geometric thirds, not anatomical lobes).",
    "affected_slices": "0-based indices (series sorted along the slice normal) of slices holding any lesion "
    "voxel; slices.json maps them to SOPInstanceUIDs and artifact names.",
    "severity": "No lobe-based CT severity score is given: lobes are not segmented.",
}


def _percent(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0


def _slice_z(affine: np.ndarray, index: int, shape: tuple[int, int]) -> np.ndarray:
    """Patient z (mm, LPS +z superior) of every pixel centre of slice `index`."""
    r = np.arange(shape[0], dtype=np.float64)[:, None]
    c = np.arange(shape[1], dtype=np.float64)[None, :]
    return affine[2, 3] + affine[2, 2] * index + affine[2, 1] * r + affine[2, 0] * c


def zone_involvement(lung_labels: np.ndarray, side: int, labels: np.ndarray, affine: np.ndarray) -> ZoneInvolvement:
    """Lesion percentage of one lung in thirds of its height along patient z (LPS +z: superior).

    The lung is `side` in `lung_labels`, lesions are `labels` above 0. Slice by slice, so memory stays at one
    slice of masks and coordinates whatever the series' size."""
    occupied = [i for i in range(lung_labels.shape[0]) if (lung_labels[i] == side).any()]
    if not occupied:
        return ZoneInvolvement(upper=0.0, middle=0.0, lower=0.0)
    low, high = np.inf, -np.inf
    for index in occupied:
        z = _slice_z(affine, index, lung_labels.shape[1:])[lung_labels[index] == side]
        low, high = min(low, float(z.min())), max(high, float(z.max()))
    cuts = [low + (high - low) / 3, low + 2 * (high - low) / 3]
    lung_counts, lesion_counts = np.zeros(3, np.int64), np.zeros(3, np.int64)
    for index in occupied:
        lung = lung_labels[index] == side
        zone = np.digitize(_slice_z(affine, index, lung_labels.shape[1:]), cuts)  # 0 lower, 1 middle, 2 upper
        lung_counts += np.bincount(zone[lung], minlength=3)
        lesion_counts += np.bincount(zone[lung & (labels[index] > 0)], minlength=3)
    lower, middle, upper = (_percent(int(a), int(b)) for a, b in zip(lesion_counts, lung_counts, strict=True))
    return ZoneInvolvement(upper=upper, middle=middle, lower=lower)


@dataclass
class _VoxelCounts:
    """Every count the result needs, gathered slice by slice: no whole-volume masks."""

    ggo: int = 0
    consolidation: int = 0
    lesion: int = 0
    lung: dict[int, int] = field(default_factory=lambda: {LungMask.RIGHT: 0, LungMask.LEFT: 0})
    lesion_in_lung: dict[int, int] = field(default_factory=lambda: {LungMask.RIGHT: 0, LungMask.LEFT: 0})
    affected_slices: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, labels: np.ndarray, lungs: LungMask) -> _VoxelCounts:
        counts = cls()
        for index, (plane, lung_plane) in enumerate(zip(labels, lungs.labels, strict=True)):
            counts.add_slice(index, plane, lung_plane)
        return counts

    def add_slice(self, index: int, plane: np.ndarray, lung_plane: np.ndarray) -> None:
        lesion = plane > 0
        n_lesion = int(np.count_nonzero(lesion))
        if n_lesion:
            self.affected_slices.append(index)
        self.lesion += n_lesion
        self.ggo += int(np.count_nonzero(plane == GGO))
        self.consolidation += int(np.count_nonzero(plane == CONSOLIDATION))
        for side in self.lung:
            in_side = lung_plane == side
            self.lung[side] += int(np.count_nonzero(in_side))
            self.lesion_in_lung[side] += int(np.count_nonzero(in_side & lesion))


def build_result(ct: CTVolume, labels: np.ndarray, lungs: LungMask, manifest: ModelManifest,
                 quality: Quality | None = None) -> CovidLesionSegmentationResult:
    voxel_ml = float(np.prod(ct.spacing_mm)) / 1000.0
    counts = _VoxelCounts.of(labels, lungs)
    right, left = LungMask.RIGHT, LungMask.LEFT
    return CovidLesionSegmentationResult(
        series_instance_uid=ct.series_instance_uid,
        lung_volume_ml=LungVolumes(left=round(counts.lung[left] * voxel_ml, 2),
                                   right=round(counts.lung[right] * voxel_ml, 2)),
        lesion_volume_ml=LesionVolumes(
            ggo=round(counts.ggo * voxel_ml, 2), consolidation=round(counts.consolidation * voxel_ml, 2),
            total=round((counts.ggo + counts.consolidation) * voxel_ml, 2)),
        involvement_percent=InvolvementPercent(
            left=_percent(counts.lesion_in_lung[left], counts.lung[left]),
            right=_percent(counts.lesion_in_lung[right], counts.lung[right]),
            total=_percent(counts.lesion, counts.lung[left] + counts.lung[right])),
        involvement_by_zone=InvolvementByZone(left=zone_involvement(lungs.labels, left, labels, ct.affine),
                                              right=zone_involvement(lungs.labels, right, labels, ct.affine)),
        affected_slices=counts.affected_slices,
        spacing_mm=tuple(round(float(v), 4) for v in ct.spacing_mm),
        n_slices=ct.geometry.n_slices,
        definitions=DEFINITIONS,
        warnings=list(ct.warnings),
        quality=quality,
        research_use_only=manifest.research_use_only,
    )


# --- artifacts ------------------------------------------------------------------------------------


def nifti_affine(lps_affine: np.ndarray) -> np.ndarray:
    """NIfTI is RAS: the DICOM (LPS) affine with its x and y rows negated."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps_affine


def label_nifti(labels: np.ndarray, lps_affine: np.ndarray) -> bytes:
    """The label volume as gzipped NIfTI-1, voxel (i, j, k) = (column, row, slice) of the series."""
    import nibabel as nib

    # The transposed view, not a copy: NIfTI stores column-fastest, so nibabel writes it slice by slice as is.
    image = nib.Nifti1Image(labels.transpose(2, 1, 0), nifti_affine(lps_affine))
    image.header.set_xyzt_units("mm")
    image.header["descrip"] = b"0 background, 1 ground-glass, 2 consolidation"
    image.set_qform(image.affine, code=1)  # scanner coordinates
    image.set_sform(image.affine, code=1)
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=6) as stream:  # never the whole file uncompressed
        image.to_stream(stream)
    return buffer.getvalue()


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def mask_png(label_slice: np.ndarray) -> bytes:
    """Greyscale, source rows x columns: 0 background, 128 ground-glass, 255 consolidation."""
    grey = np.zeros(label_slice.shape, np.uint8)
    for label, value in MASK_GREY.items():
        grey[label_slice == label] = value
    return _png(grey)


def overlay_png(hu_slice: np.ndarray, label_slice: np.ndarray) -> bytes:
    """The slice in a lung window, ground-glass in amber and consolidation in red; source rows x columns."""
    return _png(overlay_rgb(hu_slice, label_slice))


def overlay_rgb(hu_slice: np.ndarray, label_slice: np.ndarray) -> np.ndarray:
    grey = lung_window(hu_slice)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for label, colour in OVERLAY_COLOURS.items():
        where = label_slice == label
        rgb[where] = (1 - OVERLAY_ALPHA) * rgb[where] + OVERLAY_ALPHA * np.asarray(colour, np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def slice_artifact_names(index: int) -> tuple[str, str]:
    return f"slice-{index:04d}-mask.png", f"slice-{index:04d}-overlay.png"


def write_artifacts(ct: CTVolume, labels: np.ndarray, affected: list[int]) -> list[ArtifactOutput]:
    artifacts = [ArtifactOutput(NIFTI_NAME, "application/gzip", label_nifti(labels, ct.affine))]
    entries = []
    for index in affected:
        mask_name, overlay_name = slice_artifact_names(index)
        artifacts.append(ArtifactOutput(mask_name, "image/png", mask_png(labels[index])))
        artifacts.append(ArtifactOutput(overlay_name, "image/png", overlay_png(ct.hu[index], labels[index])))
        header = ct.geometry.slices[index]
        entries.append({"index": index, "sop_instance_uid": header.sop_instance_uid,
                        "frame_number": None if header.frame is None else header.frame + 1,
                        "mask": mask_name, "overlay": overlay_name})
    document = {"series_instance_uid": ct.series_instance_uid, "n_slices": ct.geometry.n_slices,
                "labels": {"0": "background", "1": "ground-glass opacity", "2": "consolidation"},
                "nifti": NIFTI_NAME, "slices": entries}
    artifacts.append(ArtifactOutput(SLICES_NAME, "application/json", json.dumps(document, indent=1).encode()))
    artifacts += [ArtifactOutput(name, "image/png", png) for name, png in display_slices(ct.hu)]
    return artifacts


def lesion_disagreement(ct: CTVolume, raw: np.ndarray, manifest: ModelManifest,
                        run: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """uint8 per voxel: how many flipped copies of the series call lesion where the original did not, or the
    reverse; and the augmentation names, the original first. Compared before decoding, on the model's calls."""
    lesion = raw > 0
    disagreement = np.zeros(raw.shape, np.uint8)
    names = uncertainty.volume_augmentations(manifest.uncertainty)
    for name in names:
        flipped = predict_labels(uncertainty.unflip(ct.hu, name), ct.spacing_mm, manifest, run,
                                 ct.geometry.slice_positions_mm)
        disagreement += lesion != (uncertainty.unflip(flipped, name) > 0)
    return disagreement, [uncertainty.ORIGINAL, *names]


def uncertainty_artifacts(ct: CTVolume, labels: np.ndarray, disagreement: np.ndarray,
                          runs: int) -> list[ArtifactOutput]:
    """uncertainty.nii.gz: the share of augmentations disagreeing per voxel, on the series' grid (uint8 counts
    with a scale slope of 1/runs); uncertainty.png: the slice with the most disagreement, lesions in the lung
    window's overlay colours and uncertain voxels in cyan."""
    import nibabel as nib

    image = nib.Nifti1Image(disagreement.transpose(2, 1, 0), nifti_affine(ct.affine))
    image.header.set_xyzt_units("mm")
    image.header.set_slope_inter(1.0 / max(runs, 1), 0.0)
    image.header["descrip"] = b"share of augmentations whose lesion call differs"
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=6) as stream:
        image.to_stream(stream)
    index = int(np.argmax(np.count_nonzero(disagreement, axis=(1, 2))))
    picture = overlay_rgb(ct.hu[index], labels[index])
    picture[disagreement[index] > 0] = UNCERTAIN_COLOUR
    return [ArtifactOutput(UNCERTAINTY_NIFTI_NAME, "application/gzip", buffer.getvalue()),
            ArtifactOutput(UNCERTAINTY_PNG_NAME, "image/png", _png(picture))]


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
