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
    resize: Literal["stretch", "letterbox"] = Field(
        "stretch", description="How a crop meets target_size: stretch (each axis scaled on its own), or letterbox "
        "(aspect kept, scaled to fit, centred, the rest filled with letterbox_fill; as YOLO-style detectors read)",
    )
    letterbox_fill: float = Field(0.0, ge=0.0, le=255.0, description="letterbox: the padding's grey level, 0-255")
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


class CodedConcept(Strict):
    """A coded term as DICOM writes it: code value, coding scheme (SCT for SNOMED CT, DCM, or a private scheme
    such as 99MEDIMG), and meaning."""

    value: str = Field(min_length=1, max_length=64)
    scheme: str = Field(min_length=1, max_length=16)
    meaning: str = Field(min_length=1, max_length=64)


class SegmentCoding(Strict):
    """How one class of a segmentation model is written as a DICOM SEG segment."""

    label: str = Field(min_length=1, max_length=64, description="Segment label (and the mask's name)")
    category: CodedConcept = Field(description="Segmented property category (CID 7150)")
    type: CodedConcept = Field(description="Segmented property type (CID 7151)")
    color_rgb: tuple[int, int, int] | None = Field(None, description="Recommended display colour, 0-255 each")

    @model_validator(mode="after")
    def _colour_in_range(self) -> SegmentCoding:
        if self.color_rgb is not None and not all(0 <= c <= 255 for c in self.color_rgb):
            raise ValueError(f"color_rgb {list(self.color_rgb)} must be three values in 0..255")
        return self


BoxFormat = Literal["xyzxyz", "zyxzyx", "xyxy", "yxyx"]


class BoxOutputs(Strict):
    """box-detection: which graph outputs hold the boxes, their scores and (optionally) their labels."""

    boxes: str = "boxes"
    scores: str = "scores"
    labels: str | None = None


class Decoding(Strict):
    """How raw outputs become findings."""

    kind: Literal[
        "ordinal-grade", "binary-probability", "segmentation-labels", "heatmap-detection", "segmentation-components",
        "box-detection", "multilabel-sigmoid",
    ]
    activation: Literal["none", "softmax", "sigmoid"] = Field(
        "softmax", description="Applied to the raw outputs: none when the graph already gives probabilities"
    )
    positive_classes: list[int] = Field(
        default_factory=list, description="Classes whose summed probability is the positive finding"
    )
    min_component_voxels: int | None = None
    nms_radius_mm: float | None = Field(
        None, ge=0.0, description="A finding whose centre lies within this distance of a better one's is dropped",
    )
    nms_iou: float | None = Field(
        None, gt=0.0, le=1.0, description="box-detection: a box whose intersection over union with a better box "
        "(in mm) reaches this is dropped",
    )
    candidate_threshold: float | None = Field(
        None, ge=0.0, le=1.0,
        description="segmentation-components: voxels at or above this probability form candidate findings "
        "(connected components); each is scored by its peak probability",
    )
    box_format: BoxFormat | None = Field(
        None, description="box-detection: the order of a box's numbers, e.g. xyzxyz = (x1, y1, z1, x2, y2, z2) "
        "(MONAI's mode) or xyxy for 2-D; each low-high pair is a voxel index range [low, high) of the model's "
        "input grid, as a slice takes it",
    )
    box_outputs: BoxOutputs | None = Field(None, description="box-detection: the graph outputs by role")
    class_thresholds: dict[str, float] | None = Field(
        None, description="multilabel-sigmoid: each finding's own operating point (probability threshold), by "
        "class name; a class not named here uses the default operating point's threshold",
    )
    segments: dict[str, SegmentCoding] | None = Field(
        None, description="Segmentation kinds: DICOM SEG coding of each class, by class name (classes not named "
        "are not written, e.g. background)",
    )

    @model_validator(mode="after")
    def _kind_has_what_it_needs(self) -> Decoding:
        if self.kind == "box-detection" and self.box_format is None:
            raise ValueError("decoding.box_format is required for box-detection (e.g. 'xyzxyz' or 'xyxy')")
        if self.class_thresholds and not all(0.0 <= t <= 1.0 for t in self.class_thresholds.values()):
            raise ValueError("decoding.class_thresholds must be probabilities in 0..1")
        return self


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


class FundusQuality(Strict):
    """Limits of the fundus-photo gate (workers/quality/fundus.py); the defaults are measured on the reference
    model's validation photos and explained on its card."""

    min_field_of_view_fraction: float = Field(0.2, ge=0.0, le=1.0, description="Retina disc area / frame area")
    min_disc_fill: float = Field(0.6, ge=0.0, le=1.0, description="Disc area / its bounding box area (a full disc "
                                 "is pi/4, a disc cut at top and bottom more)")
    max_disc_fill: float = Field(0.95, ge=0.0, le=1.0, description="Above this the bright region is a rectangle: "
                                 "an X-ray, a scan or a photo of something else")
    min_red_to_green: float = Field(1.3, ge=0.0, description="Mean red / mean green inside the disc: a colour "
                                    "fundus is red; grey images (X-rays, documents) are about 1")
    min_brightness: float = Field(30.0, ge=0.0, le=255.0, description="Mean luma inside the disc, 0-255")
    max_brightness: float = Field(220.0, ge=0.0, le=255.0)
    min_focus: float = Field(5.0, ge=0.0, description="Variance of the Laplacian of the green channel inside the "
                             "disc, resized to focus_side px")
    focus_side: int = Field(256, ge=64, description="Disc side (px) at which focus and contrast are measured")
    min_contrast: float = Field(0.08, ge=0.0, description="Std / mean of the green channel inside the disc")


class CTQuality(Strict):
    """Limits of the CT series gate (workers/quality/ct.py)."""

    max_slice_spacing_mm: float = Field(5.0, gt=0.0)
    max_slice_thickness_mm: float = Field(5.0, gt=0.0)
    max_pixel_spacing_mm: float = Field(1.5, gt=0.0)
    max_missing_run: int = Field(1, ge=0, description="Most consecutive missing slices interpolated over")
    min_lung_volume_ml: float = Field(150.0, ge=0.0, description="Air inside the body (lungs, airways): less "
                                      "means the field of view holds no chest")
    require_full_lung_coverage: bool = Field(False, description="The lungs must end inside the series (not cut "
                                             "at the first or last slice); for whole-lung figures")
    max_end_slice_lung_fraction: float = Field(0.25, ge=0.0, le=1.0, description="Lung area on the first or last "
                                               "slice / the largest lung area of any slice, above which the lungs "
                                               "are cut there")
    metal_hu: float = Field(2500.0, description="Voxels at or above this are metal")
    max_metal_ml: float | None = Field(None, ge=0.0, description="Metal (streak source) above this is refused; "
                                       "null: measured only")


class UltrasoundQuality(Strict):
    """Limits of the ultrasound frame gate (workers/quality/ultrasound.py)."""

    min_region_fraction: float = Field(0.15, ge=0.0, le=1.0, description="Imaging region area / frame area")
    min_lit_fraction: float = Field(0.5, ge=0.0, le=1.0, description="Share of the region's pixels above the "
                                    "frame's background level")
    min_texture: float = Field(8.0, ge=0.0, description="Std of the grey values inside the region (speckle)")
    require_scale: bool = Field(False, description="Refuse frames whose pixel spacing is unknown (else the "
                                "result gives no size and a size-unknown recommendation)")
    max_nodule_edge_fraction: float = Field(0.15, ge=0.0, le=1.0, description="Share of the nodule's outline lying "
                                            "on the imaging region's edge above which the nodule continues outside "
                                            "the field (a nodule grazing the edge stays gradable)")


class QualityLimits(Strict):
    """The quality gate's limits; a manifest gives the section of its input kind, the rest stay at defaults."""

    fundus: FundusQuality = Field(default_factory=FundusQuality)
    ct: CTQuality = Field(default_factory=CTQuality)
    ultrasound: UltrasoundQuality = Field(default_factory=UltrasoundQuality)


Augmentation = Literal["flip-horizontal", "flip-vertical", "brighter", "darker"]


class UncertaintySettings(Strict):
    """Test-time augmentation (workers/uncertainty.py): which changes, when on by default, what is low confidence."""

    default: bool = Field(False, description="Run unless options.uncertainty is false (on where it is cheap)")
    augmentations: list[Augmentation] = Field(default_factory=lambda: ["flip-horizontal", "brighter", "darker"],
                                              min_length=1)
    intensity_change: float = Field(0.1, gt=0.0, lt=1.0, description="brighter/darker scale the pixels by 1 +/- this")
    low_confidence_spread: float = Field(0.2, ge=0.0, le=1.0, description="Probability spread at which a result "
                                         "is flagged low_confidence")


class SaliencySettings(Strict):
    """Occlusion sensitivity (workers/saliency.py), in pixels of the model input."""

    patch_px: int = Field(32, ge=2)
    stride_px: int = Field(16, ge=1)
    batch_size: int = Field(32, ge=1)


class Calibration(Strict):
    """Temperature scaling applied at decode: softmax(logits / temperature)."""

    temperature: float = Field(gt=0.0)
    measured_on: str = Field(description="The validation split it was fitted on (see CARD.md)")


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
    quality: QualityLimits = Field(default_factory=QualityLimits, description="The input quality gate's limits")
    uncertainty: UncertaintySettings = Field(default_factory=UncertaintySettings)
    saliency: SaliencySettings = Field(default_factory=SaliencySettings)
    calibration: Calibration | None = Field(None, description="Applied to the logits at decode; null: none")

    @model_validator(mode="after")
    def _slice_offsets_fill_the_channels(self) -> ModelManifest:
        offsets = self.preprocessing.slice_offsets_mm
        channels = self.inputs[0].shape[1] if len(self.inputs[0].shape) > 1 else None
        if offsets is not None and isinstance(channels, int) and len(offsets) != channels:
            raise ValueError(f"preprocessing.slice_offsets_mm has {len(offsets)} planes, but the input "
                             f"{self.inputs[0].name!r} has {channels} channels")
        return self

    @model_validator(mode="after")
    def _decoding_names_known_classes(self) -> ModelManifest:
        for field_name in ("class_thresholds", "segments"):
            named = getattr(self.decoding, field_name) or {}
            unknown = sorted(set(named) - set(self.class_names))
            if unknown:
                raise ValueError(f"decoding.{field_name} names {unknown}, which are not in class_names "
                                 f"{self.class_names}")
        if self.decoding.box_outputs is not None:
            roles = self.decoding.box_outputs.model_dump(exclude_none=True)
            missing = sorted(name for name in roles.values() if name not in {o.name for o in self.outputs})
            if missing:
                raise ValueError(f"decoding.box_outputs names {missing}, which are not among outputs")
        return self

    @model_validator(mode="after")
    def _box_format_fits_the_graph(self) -> ModelManifest:
        """A box_format with as many axes as the input has spatial axes, and as many numbers as the boxes output
        holds per box (where the manifest gives that axis a size): a 2-D format on a volume model, or 4 numbers
        per box under a 6-number format, would be read as other boxes."""
        if self.decoding.kind != "box-detection" or self.decoding.box_format is None:
            return self
        box_format = self.decoding.box_format
        axes = len(box_format) // 2
        layout = self.inputs[0].layout
        spatial = sum(layout.count(letter) for letter in "DHW")
        if spatial and spatial != axes:
            raise ValueError(f"decoding.box_format {box_format} is {axes}-D, but the input {self.inputs[0].name!r} "
                             f"({layout}) has {spatial} spatial axes")
        boxes_name = (self.decoding.box_outputs or BoxOutputs()).boxes
        boxes = next((o for o in self.outputs if o.name == boxes_name), None)
        numbers = boxes.shape[-1] if boxes is not None and boxes.shape else None
        if isinstance(numbers, int) and numbers != 2 * axes:
            raise ValueError(f"decoding.box_format {box_format} has {2 * axes} numbers per box, but the output "
                             f"{boxes_name!r} has shape {boxes.shape}: {numbers} per box")
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
