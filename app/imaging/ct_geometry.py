"""CT series from headers alone: group instances by series, pick one, and check its geometry.

Shared by intake (so a bad series is refused with a 422 before anything is queued) and by the workers'
volume assembly (`workers/imaging/ct_series.py`), so both reach the same verdict on the same files.

Geometry follows DICOM PS3.3 C.7.6.2: ImageOrientationPatient holds the row direction (the way the column
index grows) then the column direction; PixelSpacing is (between rows, between columns); slices are
ordered by projecting ImagePositionPatient on the slice normal (row × column), never by file name or
InstanceNumber. Enhanced (multi-frame) CT carries the same attributes per frame in the functional groups.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from app.errors import UnsuitableInput

# Two orientations closer than this (largest cosine difference) are the same orientation.
ORIENTATION_TOLERANCE = 1e-3
# Positions may drift sideways by this much (degrees) along the stack before it counts as gantry tilt.
MAX_TILT_DEGREES = 0.5
# A slice step within this fraction of the nominal spacing is regular.
SPACING_TOLERANCE = 0.1
# Steps that are whole multiples of the nominal spacing are missing slices (a warning) unless they add
# up to more than this fraction of the series, which is then refused.
MAX_MISSING_FRACTION = 0.25
# Steps that are neither regular nor a whole multiple: refused when they differ from the nominal spacing
# by more than this factor.
MAX_IRREGULAR_RATIO = 1.5
MAX_LISTED_SERIES = 10


@dataclass(frozen=True)
class SliceHeader:
    """One slice: a single-frame instance, or one frame of an enhanced (multi-frame) instance."""

    path: Path
    label: str
    sop_instance_uid: str
    frame: int | None  # 0-based frame index inside a multi-frame instance; None for a single-frame one
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns), mm
    slice_thickness: float | None
    rescale_slope: float
    rescale_intercept: float
    rows: int
    columns: int


@dataclass(frozen=True)
class InstanceHeader:
    path: Path
    label: str
    modality: str | None
    series_instance_uid: str
    series_number: str
    image_type: tuple[str, ...]
    slices: tuple[SliceHeader, ...]

    @property
    def is_localizer(self) -> bool:
        return "LOCALIZER" in self.image_type


@dataclass
class SeriesHeaders:
    """SeriesDescription is left out on purpose: free text, it often holds names, and error details quote this."""

    series_instance_uid: str
    number: str
    instances: list[InstanceHeader] = field(default_factory=list)

    @property
    def modalities(self) -> list[str]:
        return sorted({i.modality or "missing" for i in self.instances})

    @property
    def n_slices(self) -> int:
        return sum(len(i.slices) for i in self.instances)

    @property
    def is_localizer(self) -> bool:
        return all(i.is_localizer for i in self.instances)

    def summary(self, position: int) -> str:
        """Named by its position in the upload and its slice count, as files are named by position."""
        number = f", series number {self.number}" if self.number else ""
        return (f"series {position} of the upload ({self.series_instance_uid}{number}, {'/'.join(self.modalities)}, "
                f"{self.n_slices} slice{'s' if self.n_slices != 1 else ''})")


@dataclass(frozen=True)
class VolumeGeometry:
    """Where every slice of a checked series goes, and how voxels map to patient (LPS) millimetres.

    Voxel indices are (column, row, slice); slice 0 is the lowest along the slice normal. `affine` maps
    (column, row, slice, 1) to (x, y, z, 1) in LPS mm using the nominal slice spacing; `slice_positions_mm`
    holds every slice's true distance along the normal from slice 0, which the affine only approximates
    when slices are missing.
    """

    series_instance_uid: str
    slices: tuple[SliceHeader, ...]
    affine: np.ndarray
    spacing_mm: tuple[float, float, float]  # (column, row, slice) step in mm
    slice_positions_mm: np.ndarray
    normal: np.ndarray
    rows: int
    columns: int
    warnings: tuple[str, ...] = ()

    @property
    def n_slices(self) -> int:
        return len(self.slices)

    @property
    def sop_instance_uids(self) -> list[str]:
        return [s.sop_instance_uid for s in self.slices]

    def slice_index_at(self, position_mm: float) -> float:
        """Fractional slice index of a distance along the normal (interpolated through missing slices)."""
        return float(np.interp(position_mm, self.slice_positions_mm, np.arange(self.n_slices)))

    def position_at(self, slice_index: float) -> float:
        return float(np.interp(slice_index, np.arange(self.n_slices), self.slice_positions_mm))

    def voxel_to_patient(self, column: float, row: float, slice_index: float) -> np.ndarray:
        """LPS mm of a (fractional) voxel, using the true slice positions."""
        origin = np.asarray(self.slices[0].position, dtype=np.float64)
        return (origin + column * self.affine[:3, 0] + row * self.affine[:3, 1]
                + self.position_at(slice_index) * self.normal)


# --- reading --------------------------------------------------------------------------------------


def read_instance_header(path: Path, label: str) -> InstanceHeader:
    """Header of one file, pixel data skipped; geometry is read but checked only by `plan_volume`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise UnsuitableInput(f"{label} is not a readable DICOM file ({type(exc).__name__})") from exc
    except Exception as exc:  # malformed input may raise anything inside pydicom
        raise UnsuitableInput(f"{label} is not a readable DICOM file ({type(exc).__name__})") from exc
    try:
        sop_uid = str(ds.get("SOPInstanceUID", "") or "")
        frames = max(_int(ds.get("NumberOfFrames"), 1), 1)
        if "PerFrameFunctionalGroupsSequence" in ds:
            slices = _enhanced_slices(ds, path, label, sop_uid, frames)
        else:
            slices = (_slice_from(ds, ds, ds, ds, path, label, sop_uid, None),)
            if frames > 1:
                raise UnsuitableInput(
                    f"{label} holds {frames} frames without per-frame functional groups, so the frames have "
                    "no positions; send one file per slice or an Enhanced CT instance"
                )
        image_type = tuple(str(v).upper() for v in (ds.get("ImageType") or ()))
        return InstanceHeader(
            path=path,
            label=label,
            modality=_text(ds.get("Modality")),
            series_instance_uid=str(ds.get("SeriesInstanceUID", "") or "(no SeriesInstanceUID)"),
            series_number=str(ds.get("SeriesNumber", "") or ""),
            image_type=image_type,
            slices=slices,
        )
    except UnsuitableInput:
        raise
    except Exception as exc:
        raise UnsuitableInput(f"{label} has malformed geometry attributes ({type(exc).__name__})") from exc


def read_instance_headers(files: Sequence[tuple[Path, str]], max_workers: int | None = None) -> list[InstanceHeader]:
    if len(files) <= 4:
        return [read_instance_header(path, label) for path, label in files]
    with ThreadPoolExecutor(max_workers=max_workers or 4) as pool:
        return list(pool.map(lambda item: read_instance_header(*item), files))


def _enhanced_slices(ds, path: Path, label: str, sop_uid: str, frames: int) -> tuple[SliceHeader, ...]:
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared_item = shared[0] if shared else None
    per_frame = ds.PerFrameFunctionalGroupsSequence
    if len(per_frame) < frames:
        raise UnsuitableInput(f"{label} declares {frames} frames but has {len(per_frame)} per-frame groups")
    slices = []
    for index in range(frames):
        item = per_frame[index]

        def group(name: str, item=item):
            for source in (item, shared_item):
                if source is not None and name in source and len(source[name].value):
                    return source[name].value[0]
            return None

        slices.append(_slice_from(
            ds, group("PlanePositionSequence"), group("PlaneOrientationSequence"), group("PixelMeasuresSequence"),
            path, label, sop_uid, index, group("PixelValueTransformationSequence"),
        ))
    return tuple(slices)


def _slice_from(ds, position_src, orientation_src, measures_src, path, label, sop_uid, frame,
                rescale_src=None) -> SliceHeader:
    rescale_src = rescale_src if rescale_src is not None else ds
    position = _floats(position_src, "ImagePositionPatient", 3)
    orientation = _floats(orientation_src, "ImageOrientationPatient", 6)
    spacing = _floats(measures_src, "PixelSpacing", 2)
    thickness = _floats(measures_src, "SliceThickness", 1)
    return SliceHeader(
        path=path,
        label=label,
        sop_instance_uid=sop_uid,
        frame=frame,
        position=position,
        orientation=orientation,
        pixel_spacing=spacing,
        slice_thickness=thickness[0] if thickness else None,
        rescale_slope=_float(rescale_src.get("RescaleSlope") if rescale_src is not None else None, 1.0),
        rescale_intercept=_float(rescale_src.get("RescaleIntercept") if rescale_src is not None else None, 0.0),
        rows=_int(ds.get("Rows"), 0),
        columns=_int(ds.get("Columns"), 0),
    )


# --- grouping and choosing ------------------------------------------------------------------------


def group_series(instances: Iterable[InstanceHeader]) -> list[SeriesHeaders]:
    groups: dict[str, SeriesHeaders] = {}
    for instance in instances:
        uid = instance.series_instance_uid
        if uid not in groups:
            groups[uid] = SeriesHeaders(uid, instance.series_number)
        groups[uid].instances.append(instance)
    return list(groups.values())


def select_series(groups: list[SeriesHeaders], modalities: Sequence[str], wanted_uid: str | None = None,
                  task: str = "this task") -> SeriesHeaders:
    """The requested series; else the only one; else the only one that could serve (right modality,
    more than one slice, not a localizer); else a 422 listing the series so the caller can choose."""
    if not groups:
        raise UnsuitableInput("The upload holds no DICOM instances")
    if wanted_uid is not None:
        for group in groups:
            if group.series_instance_uid == wanted_uid:
                return group
        raise UnsuitableInput(
            f"options.series_instance_uid {wanted_uid!r} is not in the upload; it holds "
            f"{_listing(groups)}",
            series=_series_list(groups),
        )
    if len(groups) == 1:
        return groups[0]
    candidates = [
        g for g in groups
        if (not modalities or set(g.modalities) <= set(modalities)) and g.n_slices > 1 and not g.is_localizer
    ]
    if len(candidates) == 1:
        return candidates[0]
    raise UnsuitableInput(
        f"The upload holds {len(groups)} series and {len(candidates) or 'none'} of them could serve {task}; "
        f"pass the one to use as options.series_instance_uid. Series: {_listing(groups)}",
        series=_series_list(groups),
    )


def _listing(groups: list[SeriesHeaders]) -> str:
    shown = "; ".join(g.summary(position) for position, g in enumerate(groups[:MAX_LISTED_SERIES], start=1))
    more = len(groups) - MAX_LISTED_SERIES
    return shown + (f"; and {more} more" if more > 0 else "")


def _series_list(groups: list[SeriesHeaders]) -> list[dict]:
    return [
        {"position": position, "series_instance_uid": g.series_instance_uid, "series_number": g.number,
         "modalities": g.modalities, "n_slices": g.n_slices}
        for position, g in enumerate(groups, start=1)
    ]


# --- geometry -------------------------------------------------------------------------------------


def plan_volume(series: SeriesHeaders, modalities: Sequence[str], task: str = "this task") -> VolumeGeometry:
    """Check that the series is one regular stack of parallel slices and place every slice in it."""
    what = f"Series {series.series_instance_uid}"
    if modalities and not set(series.modalities) <= set(modalities):
        raise UnsuitableInput(
            f"{what} has Modality {'/'.join(series.modalities)}; {task} needs {' or '.join(modalities)}"
        )
    slices = [s for instance in series.instances for s in instance.slices]
    if len(slices) < 2:
        raise UnsuitableInput(
            f"{what} has a single slice; {task} needs a volume (the whole series, or an Enhanced CT instance)"
        )
    for s in slices:
        missing = [name for name, value in (("ImagePositionPatient", s.position),
                                            ("ImageOrientationPatient", s.orientation),
                                            ("PixelSpacing", s.pixel_spacing)) if value is None]
        if missing:
            frame = f" frame {s.frame + 1}" if s.frame is not None else ""
            raise UnsuitableInput(f"{s.label}{frame} has no {', '.join(missing)}; slices cannot be placed in space")
        if s.rows <= 0 or s.columns <= 0:
            raise UnsuitableInput(f"{s.label} declares an empty image ({s.rows} rows x {s.columns} columns)")

    orientations = np.array([s.orientation for s in slices], dtype=np.float64)
    reference = orientations[0]
    distinct = _distinct_rows(orientations)
    if len(distinct) > 1:
        shown = ", ".join("[" + ", ".join(f"{v:.3f}" for v in o) + "]" for o in distinct[:3])
        raise UnsuitableInput(
            f"{what} mixes {len(distinct)} slice orientations (ImageOrientationPatient {shown}"
            f"{', …' if len(distinct) > 3 else ''}); a volume needs parallel slices. Send one orientation per job"
        )
    row_dir, col_dir = reference[:3], reference[3:]
    if (abs(np.linalg.norm(row_dir) - 1) > 0.01 or abs(np.linalg.norm(col_dir) - 1) > 0.01
            or abs(float(row_dir @ col_dir)) > 0.01):
        raise UnsuitableInput(f"{what} has an ImageOrientationPatient whose direction cosines are not orthonormal")
    row_dir, col_dir = row_dir / np.linalg.norm(row_dir), col_dir / np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)

    shapes = {(s.rows, s.columns) for s in slices}
    if len(shapes) > 1:
        raise UnsuitableInput(f"{what} mixes image sizes {sorted(shapes)}; a volume needs one rows x columns")
    spacings = np.array([s.pixel_spacing for s in slices], dtype=np.float64)
    if np.any(spacings <= 0):
        raise UnsuitableInput(f"{what} has a PixelSpacing that is not positive")
    if np.ptp(spacings, axis=0).max() > 1e-3 * spacings.max():
        raise UnsuitableInput(f"{what} mixes pixel spacings {sorted({tuple(map(float, p)) for p in spacings})}")

    positions = np.array([s.position for s in slices], dtype=np.float64)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    positions, along = positions[order], along[order]
    ordered = tuple(slices[i] for i in order)
    steps = np.diff(along)
    if np.any(steps < 0.01):
        duplicates = int(np.sum(steps < 0.01))
        raise UnsuitableInput(
            f"{what} has {duplicates} slice(s) at the same position as another (duplicate instances, or two "
            "acquisitions in one series); send one acquisition"
        )

    # Gantry tilt: the stack drifts sideways (within the slice plane) as it advances along the normal.
    sideways = (positions - positions[0]) - np.outer(along - along[0], normal)
    drift = float(np.linalg.norm(sideways[-1]))
    extent = float(along[-1] - along[0])
    tilt = math.degrees(math.atan2(drift, extent))
    if tilt > MAX_TILT_DEGREES:
        raise UnsuitableInput(
            f"{what} is acquired with a gantry tilt of about {tilt:.1f} degrees (slice positions drift "
            f"{drift:.1f} mm sideways over {extent:.1f} mm); tilted series are not supported — send a series "
            "reconstructed without tilt"
        )
    if np.linalg.norm(sideways, axis=1).max() > 1.0 + 0.01 * extent:
        raise UnsuitableInput(f"{what}: slice positions do not lie on one line along the slice normal")

    nominal, notes = _check_spacing(steps, what)
    row_spacing, column_spacing = (float(v) for v in spacings[0])
    affine = np.eye(4)
    affine[:3, 0] = row_dir * column_spacing
    affine[:3, 1] = col_dir * row_spacing
    affine[:3, 2] = normal * nominal
    affine[:3, 3] = positions[0]
    thickness = [s.slice_thickness for s in ordered if s.slice_thickness]
    if thickness and max(thickness) > 2.5 * nominal:
        notes.append(f"slice thickness {max(thickness):g} mm is more than 2.5 times the slice spacing {nominal:g} mm")
    return VolumeGeometry(
        series_instance_uid=series.series_instance_uid,
        slices=ordered,
        affine=affine,
        spacing_mm=(column_spacing, row_spacing, nominal),
        slice_positions_mm=along - along[0],
        normal=normal,
        rows=ordered[0].rows,
        columns=ordered[0].columns,
        warnings=tuple(notes),
    )


def _check_spacing(steps: np.ndarray, what: str) -> tuple[float, list[str]]:
    """Nominal slice spacing, and warnings for missing slices; refuses wildly irregular stacks."""
    nominal = float(np.median(steps))
    ratio = steps / nominal
    regular = np.abs(ratio - 1) <= SPACING_TOLERANCE
    multiple = ~regular & (np.round(ratio) >= 2) & (np.abs(ratio - np.round(ratio)) <= SPACING_TOLERANCE)
    irregular = ~regular & ~multiple
    notes: list[str] = []
    if np.any(irregular):
        worst = float(steps[irregular][np.argmax(np.abs(np.log(ratio[irregular])))])
        if max(worst / nominal, nominal / worst) > MAX_IRREGULAR_RATIO:
            raise UnsuitableInput(
                f"{what} has irregular slice spacing: steps from {steps.min():.2f} to {steps.max():.2f} mm around "
                f"a nominal {nominal:.2f} mm (one of {worst:.2f} mm); send a series reconstructed at one spacing"
            )
        notes.append(
            f"slice spacing varies from {steps.min():.3f} to {steps.max():.3f} mm (nominal {nominal:.3f} mm); "
            "slices were placed at their true positions"
        )
    if np.any(multiple):
        missing = int(np.sum(np.round(ratio[multiple]) - 1))
        total = len(steps) + 1 + missing
        if missing > MAX_MISSING_FRACTION * total:
            raise UnsuitableInput(
                f"{what} is missing {missing} of {total} slices (gaps in the stack); send the complete series"
            )
        after = ", ".join(str(int(i)) for i in np.flatnonzero(multiple)[:5])
        notes.append(
            f"{missing} slice(s) missing in {int(np.sum(multiple))} gap(s) of the stack (after sorted slice "
            f"index {after}); the volume was interpolated across them"
        )
    return nominal, notes


def _distinct_rows(values: np.ndarray) -> list[np.ndarray]:
    distinct: list[np.ndarray] = []
    for row in values:
        if not any(np.max(np.abs(row - d)) <= ORIENTATION_TOLERANCE for d in distinct):
            distinct.append(row)
    return distinct


# --- intake entry point ---------------------------------------------------------------------------


def check_volume_files(files: Sequence[tuple[Path, str]], modalities: Sequence[str], task: str,
                       series_instance_uid: str | None = None) -> tuple[SeriesHeaders, VolumeGeometry]:
    """Intake's verdict on an upload meant to form one volume; raises UnsuitableInput (422) if it cannot."""
    series = select_series(group_series(read_instance_headers(files)), modalities, series_instance_uid, task)
    return series, plan_volume(series, modalities, task)


def _floats(source, keyword: str, count: int) -> tuple[float, ...] | None:
    if source is None or keyword not in source:
        return None
    value = source[keyword].value
    if value is None or value == "":
        return None
    values = list(value) if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") and not isinstance(
        value, (str, bytes)) else [value]
    if len(values) != count:
        return None
    try:
        result = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None
    return result if all(math.isfinite(v) for v in result) else None


def _float(value: object, default: float) -> float:
    try:
        result = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    return result if math.isfinite(result) else default


def _int(value: object, default: int) -> int:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default


def _text(value: object) -> str | None:
    return None if value in (None, "") else str(value)
