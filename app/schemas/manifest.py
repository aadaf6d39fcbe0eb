"""The model manifest: everything a generic runner needs to serve an ONNX model.

A hospital's validated model drops in by shipping a `manifest.json` that follows this schema beside
its `model.onnx`; nothing about a particular model is hard-coded in the pipelines.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.schemas.tasks import TaskName

InputFormat = Literal["dicom", "png", "jpeg"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(Strict):
    """One ONNX graph input or output. Dynamic axes are given as a string such as "batch"."""

    name: str
    dtype: Literal["float32", "float16", "uint8", "int64"] = "float32"
    layout: str = Field(description="Axis letters, e.g. NCHW or NCDHW")
    shape: list[int | str]

    @model_validator(mode="after")
    def _layout_matches_shape(self) -> TensorSpec:
        if len(self.layout) != len(self.shape):
            raise ValueError(f"layout {self.layout!r} has {len(self.layout)} axes but shape has {len(self.shape)}")
        return self


class InputConstraints(Strict):
    """What an input must look like for the model to serve it; checked at intake from headers alone."""

    formats: list[InputFormat]
    modalities: list[str] = Field(default_factory=list, description="Accepted DICOM Modality values")
    samples_per_pixel: list[int] = Field(default_factory=lambda: [1, 3])
    min_rows: int = 1
    min_columns: int = 1
    max_frames: int | None = Field(None, description="Largest accepted NumberOfFrames of one instance")
    min_instances: int = 1
    max_instances: int | None = None
    volume: bool = Field(
        False, description="The instances are the slices (or frames) of one volume: intake groups them by series, "
        "picks one and checks its geometry (orientation, spacing, gantry tilt) before queueing",
    )


class Normalization(Strict):
    """x = (pixel * scale - mean[c]) / std[c], per channel in `color_order`."""

    scale: float = 1.0 / 255.0
    mean: list[float]
    std: list[float]


class Preprocessing(Strict):
    color_order: Literal["RGB", "BGR", "GRAY"] = "RGB"
    crop: Literal["none", "retina-disc", "imaging-region"] = "none"
    target_size: tuple[int, int] | None = Field(None, description="Height and width in pixels")
    normalization: Normalization | None = None
    target_spacing_mm: tuple[float, float, float] | None = Field(
        None, description="z, y, x voxel spacing the model reads; slice-wise (2D, 2.5D) models resample only in "
        "plane (y, x) and read the series' own slices"
    )
    window_hu: tuple[float, float] | None = Field(None, description="Lower and upper Hounsfield unit bounds")
    slice_offsets_mm: list[float] | None = Field(
        None, description="Slice-wise (2.5D) models: the planes stacked as an input's channels, in mm along the "
        "slice normal from the slice being segmented, interpolated between the series' slices (the end slices "
        "repeat beyond the series); null stacks the slice and its adjacent slices, as many as the input's channels"
    )
    patch_size: tuple[int, ...] | None = Field(
        None, description="Sliding-window inference in patches of this size (3 axes for volumes, 2 for slices); "
        "null runs whole inputs"
    )
    patch_overlap: float | None = Field(None, ge=0.0, lt=1.0, description="Fraction of a patch its neighbour overlaps")
    batch_size: int | None = Field(
        None, ge=1, description="Slices or patches per inference run; null leaves it to the pipeline's default"
    )


class Decoding(Strict):
    """How raw outputs become findings."""

    kind: Literal[
        "ordinal-grade", "binary-probability", "segmentation-labels", "heatmap-detection", "segmentation-components"
    ]
    activation: Literal["none", "softmax", "sigmoid"] = "softmax"
    positive_classes: list[int] = Field(
        default_factory=list, description="Classes whose summed probability is the positive finding"
    )
    min_component_voxels: int | None = None
    nms_radius_mm: float | None = None
    candidate_threshold: float | None = Field(
        None, ge=0.0, le=1.0,
        description="segmentation-components: voxels at or above this probability form candidate findings "
        "(connected components); each is scored by its peak probability",
    )


class OperatingPoint(Strict):
    name: str
    threshold: float = Field(ge=0.0, le=1.0)
    sensitivity: float | None = None
    specificity: float | None = None
    sensitivity_ci95: tuple[float, float] | None = Field(None, description="95 % interval, where it was measured")
    specificity_ci95: tuple[float, float] | None = None
    measured_on: str = Field(description="Where the sensitivity and specificity were measured")


class Provenance(Strict):
    created: str
    framework: str
    training_data: str
    training_script: str


class ModelManifest(Strict):
    manifest_version: Literal[1] = 1
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    version: int = Field(ge=1)
    task: TaskName
    title: str
    intended_use: str
    research_use_only: bool
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of model.onnx, verified at load")
    accepts: InputConstraints
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    preprocessing: Preprocessing
    decoding: Decoding
    class_names: list[str]
    operating_points: list[OperatingPoint] = Field(min_length=1)
    default_operating_point: str
    metrics: dict[str, float] = Field(default_factory=dict, description="Measured on held-out data, see CARD.md")
    provenance: Provenance
    requires: list[str] = Field(
        default_factory=list,
        description="Ids of other models in the repository this model's pipeline also runs (a cascade's earlier "
        "stages); they are loaded with it and never serve a task on their own",
    )

    @model_validator(mode="after")
    def _slice_offsets_fill_the_channels(self) -> ModelManifest:
        offsets = self.preprocessing.slice_offsets_mm
        channels = self.inputs[0].shape[1] if len(self.inputs[0].shape) > 1 else None
        if offsets is not None and isinstance(channels, int) and len(offsets) != channels:
            raise ValueError(f"preprocessing.slice_offsets_mm has {len(offsets)} planes, but the input "
                             f"{self.inputs[0].name!r} has {channels} channels")
        return self

    @model_validator(mode="after")
    def _default_operating_point_exists(self) -> ModelManifest:
        if self.default_operating_point not in {p.name for p in self.operating_points}:
            raise ValueError(f"default_operating_point {self.default_operating_point!r} is not among operating_points")
        return self

    def operating_point(self, name: str | None = None) -> OperatingPoint:
        wanted = name or self.default_operating_point
        for point in self.operating_points:
            if point.name == wanted:
                return point
        raise KeyError(wanted)
