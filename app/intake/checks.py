"""Check staged inputs against the model's `accepts` block before anything is queued."""

from __future__ import annotations

from dataclasses import dataclass

from app.errors import UnsuitableInput
from app.imaging.ct_geometry import check_volume_files
from app.intake.dicom_headers import DicomHeader, read_dicom_header
from app.intake.raster_headers import RasterHeader, read_raster_header
from app.intake.staging import StagedFile
from app.schemas.manifest import InputConstraints
from app.schemas.tasks import TaskName


@dataclass(frozen=True)
class InspectedInput:
    staged: StagedFile
    dicom: DicomHeader | None = None
    raster: RasterHeader | None = None


def inspect_inputs(files: list[StagedFile], max_pixels: int, max_voxels: int) -> list[InspectedInput]:
    inspected = []
    for staged in files:
        if staged.format == "dicom":
            header = read_dicom_header(staged.path, staged.label)
            if header.rows * header.columns > max_pixels:
                raise UnsuitableInput(
                    f"{staged.label} declares frames of {header.columns}x{header.rows} pixels, more than the limit "
                    f"of {max_pixels} pixels a frame (MEDIMG_MAX_IMAGE_PIXELS)"
                )
            if header.rows * header.columns * header.frames > max_voxels:
                raise UnsuitableInput(
                    f"{staged.label} declares {header.columns}x{header.rows}x{header.frames} pixels, more than the "
                    f"limit of {max_voxels} (MEDIMG_MAX_VOLUME_VOXELS)"
                )
            inspected.append(InspectedInput(staged, dicom=header))
        else:
            inspected.append(InspectedInput(staged, raster=read_raster_header(staged.path, staged.label, max_pixels)))
    return inspected


def check_inputs(
    inputs: list[InspectedInput], accepts: InputConstraints, task: TaskName, series_instance_uid: str | None = None
) -> list[InspectedInput]:
    """The inputs that will serve the task (for a volume task, the chosen series), or a 4xx error."""
    if not inputs:
        raise UnsuitableInput("The upload holds no files; send at least one in the `files` field")
    formats = {i.staged.format for i in inputs}
    refused = formats - set(accepts.formats)
    if refused:
        raise UnsuitableInput(
            f"Task {task.value!r} accepts {', '.join(accepts.formats)} input; got {', '.join(sorted(refused))}"
        )
    if len(formats) > 1:
        raise UnsuitableInput(f"Mixed input formats in one job ({', '.join(sorted(formats))}); send one kind per job")
    if len(inputs) < accepts.min_instances:
        raise UnsuitableInput(f"Task {task.value!r} needs at least {accepts.min_instances} images; got {len(inputs)}")
    if accepts.max_instances is not None and len(inputs) > accepts.max_instances:
        raise UnsuitableInput(
            f"Task {task.value!r} takes at most {accepts.max_instances} image(s) per job; got {len(inputs)}. "
            "Submit one job per image"
        )
    if accepts.volume:
        inputs = _check_volume(inputs, accepts, task, series_instance_uid)
    for item in inputs:
        if item.dicom is not None:
            _check_dicom(item.dicom, item.staged.label, accepts, task)
        elif item.raster is not None:
            _check_raster(item.raster, item.staged.label, accepts, task)
    return inputs


def _check_volume(
    inputs: list[InspectedInput], accepts: InputConstraints, task: TaskName, series_instance_uid: str | None
) -> list[InspectedInput]:
    """One series forming one volume (chosen, then its geometry checked); returns that series' inputs."""
    series, _ = check_volume_files(
        [(i.staged.path, i.staged.label) for i in inputs], accepts.modalities, f"task {task.value!r}",
        series_instance_uid,
    )
    chosen = {instance.path for instance in series.instances}
    return [i for i in inputs if i.staged.path in chosen]


def _check_dicom(header: DicomHeader, label: str, accepts: InputConstraints, task: TaskName) -> None:
    if accepts.modalities and header.modality not in accepts.modalities:
        raise UnsuitableInput(
            f"{label} has Modality {header.modality or 'missing'}; task {task.value!r} accepts "
            f"{', '.join(accepts.modalities)}"
        )
    if header.samples_per_pixel not in accepts.samples_per_pixel:
        raise UnsuitableInput(
            f"{label} has {header.samples_per_pixel} samples per pixel; task {task.value!r} accepts "
            f"{' or '.join(map(str, accepts.samples_per_pixel))}"
        )
    if accepts.max_frames is not None and header.frames > accepts.max_frames:
        raise UnsuitableInput(
            f"{label} has {header.frames} frames; task {task.value!r} accepts at most {accepts.max_frames}"
        )
    _check_size(header.rows, header.columns, label, accepts)


def _check_raster(header: RasterHeader, label: str, accepts: InputConstraints, task: TaskName) -> None:
    if header.samples_per_pixel not in accepts.samples_per_pixel:
        raise UnsuitableInput(
            f"{label} is a {header.mode} image; task {task.value!r} needs "
            f"{' or '.join(map(str, accepts.samples_per_pixel))} channel(s)"
        )
    _check_size(header.height, header.width, label, accepts)


def _check_size(rows: int, columns: int, label: str, accepts: InputConstraints) -> None:
    if rows < accepts.min_rows or columns < accepts.min_columns:
        raise UnsuitableInput(
            f"{label} is {columns}x{rows} pixels; the model needs at least {accepts.min_columns}x{accepts.min_rows}"
        )
