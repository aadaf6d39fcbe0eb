"""Task results. Built from typed parts and validated on construction, so an invalid result cannot exist."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from app.schemas.quality import (
    ClassificationUncertainty,
    DetectionUncertainty,
    Quality,
    SegmentationUncertainty,
)
from app.schemas.tirads import Recommendation, RiskBand

QUALITY_FIELD = Field(None, description="The input quality gate's verdict and measures (gradable here; an "
                      "ungradable input gets an UngradableResult instead)")


class OperatingPointUsed(BaseModel):
    name: str
    threshold: float = Field(ge=0.0, le=1.0)
    sensitivity: float | None = Field(None, description="Measured by the model's maker (see the model card) or, for "
                                      "a site's point, on the site's labelled data (measured_on says which)")
    specificity: float | None = None
    sensitivity_ci95: tuple[float, float] | None = None
    specificity_ci95: tuple[float, float] | None = None
    measured_on: str | None = None
    overridden: bool = Field(False, description="True when the caller's threshold replaced the manifest's")


class DRGradingResult(BaseModel):
    """Diabetic retinopathy grade on the ICDR scale, from one colour fundus photograph."""

    grade: int = Field(ge=0, le=4, description="ICDR grade: 0 none … 4 proliferative DR")
    grade_name: str
    probabilities: list[float] = Field(min_length=5, max_length=5, description="Per ICDR grade, summing to 1")
    referable: bool = Field(description="Moderate NPDR or worse, at the operating point")
    referable_probability: float = Field(ge=0.0, le=1.0, description="Sum of probabilities of grades 2-4")
    operating_point: OperatingPointUsed
    quality: Quality | None = QUALITY_FIELD
    uncertainty: ClassificationUncertainty | None = Field(None, description="Test-time augmentation spread; null "
                                                          "when options.uncertainty is off")
    research_use_only: bool

    @model_validator(mode="after")
    def _probabilities_sum_to_one(self) -> DRGradingResult:
        if abs(sum(self.probabilities) - 1.0) > 1e-3:
            raise ValueError(f"probabilities sum to {sum(self.probabilities):.4f}, not 1")
        return self


class KeySlice(BaseModel):
    """The slice through a finding's centre, to open in a viewer."""

    index: int = Field(ge=0, description="0-based position in the series sorted along the slice normal")
    sop_instance_uid: str = Field(min_length=1)
    frame_number: int | None = Field(
        None, ge=1, description="1-based frame within an enhanced (multi-frame) instance; null for single-frame"
    )


class NoduleFinding(BaseModel):
    id: int = Field(ge=1, description="1-based, in order of decreasing score; names the overlay nodule-<id>.png")
    score: float = Field(ge=0.0, le=1.0, description="The model's confidence that this is a nodule")
    center_mm: tuple[float, float, float] = Field(description="Centre in patient coordinates (DICOM LPS), mm")
    center_voxel: tuple[float, float, float] = Field(
        description="Centre as (column, row, slice) index in the series; slice as in key_slice.index"
    )
    diameter_mm: float = Field(gt=0.0, description="Diameter of the sphere of the same volume")
    bbox_mm: tuple[tuple[float, float, float], tuple[float, float, float]] = Field(
        description="[[x0, y0, z0], [x1, y1, z1]]: the finding's extent in patient LPS mm, lower corner first"
    )
    key_slice: KeySlice

    @model_validator(mode="after")
    def _bbox_is_ordered_and_holds_the_centre(self) -> NoduleFinding:
        low, high = self.bbox_mm
        if any(a > b for a, b in zip(low, high, strict=True)):
            raise ValueError(f"bbox_mm lower corner {low} is above its upper corner {high}")
        if any(not (a - 1e-3 <= c <= b + 1e-3) for a, c, b in zip(low, self.center_mm, high, strict=True)):
            raise ValueError(f"center_mm {self.center_mm} lies outside bbox_mm {self.bbox_mm}")
        return self


class LungNoduleDetectionResult(BaseModel):
    """Pulmonary nodules found in one CT series, each placed in patient millimetres and on a slice."""

    series_instance_uid: str
    nodules: list[NoduleFinding] = Field(description="Findings scoring at or above the threshold, best first")
    spacing_mm: tuple[float, float, float] = Field(description="(column, row, slice) spacing of the series, mm")
    n_slices: int = Field(ge=2, description="Slices in the series; artifact slice-<index:04d>.png shows each")
    operating_point: OperatingPointUsed
    warnings: list[str] = Field(default_factory=list, description="E.g. missing slices the volume was interpolated over")
    quality: Quality | None = QUALITY_FIELD
    uncertainty: DetectionUncertainty | None = Field(None, description="Per-finding score spread across "
                                                     "augmentations; null when options.uncertainty is off")
    research_use_only: bool

    @model_validator(mode="after")
    def _findings_are_numbered_by_score(self) -> LungNoduleDetectionResult:
        if [n.id for n in self.nodules] != list(range(1, len(self.nodules) + 1)):
            raise ValueError("nodule ids must run 1..n")
        scores = [n.score for n in self.nodules]
        if scores != sorted(scores, reverse=True):
            raise ValueError("nodules must be ordered by decreasing score")
        if any(s < self.operating_point.threshold for s in scores):
            raise ValueError(f"a nodule scores below the threshold {self.operating_point.threshold}")
        if any(n.key_slice.index >= self.n_slices for n in self.nodules):
            raise ValueError(f"a key slice index is beyond the series' {self.n_slices} slices")
        return self


class ThyroidNodule(BaseModel):
    """The scored nodule, in pixels of the input frame."""

    bbox_px: tuple[int, int, int, int] = Field(description="x0, y0, x1, y1; x1 and y1 exclusive")
    area_px: int = Field(ge=1)
    max_diameter_mm: float | None = Field(None, ge=0.0, description="Maximum Feret diameter; null without spacing")
    taller_than_wide: bool = Field(description="Anteroposterior extent greater than transverse (ACR shape)")
    source: Literal["segmentation", "detection", "roi-box", "roi-mask"] = Field(
        description="Who outlined the nodule: the segmentation model, the box-detection model (the ellipse "
        "inscribed in its best box, detections[0]), or the caller's box or mask"
    )

    @model_validator(mode="after")
    def _bbox_ordered(self) -> ThyroidNodule:
        x0, y0, x1, y1 = self.bbox_px
        if not (0 <= x0 < x1 and 0 <= y0 < y1):
            raise ValueError(f"bbox_px {list(self.bbox_px)} is not x0 < x1, y0 < y1")
        if self.area_px > (x1 - x0) * (y1 - y0):
            raise ValueError("area_px exceeds the bounding box")
        return self


class ThyroidDetection(BaseModel):
    """One box of a box-detection localiser, mapped from the model's input back onto the frame.

    Pixel coordinates are of pixel edges from the frame's top-left corner (pixel column i spans x in [i, i + 1));
    millimetres are the same coordinates times the pixel spacing (x by the column spacing, y by the row spacing),
    null when the spacing is unknown.
    """

    id: int = Field(ge=1, description="1-based, in order of decreasing score; the nodule scored is id 1")
    label: str = Field(description="The detector's class name for the box")
    score: float = Field(ge=0.0, le=1.0)
    bbox_px: tuple[float, float, float, float] = Field(description="x0, y0, x1, y1 in frame pixels")
    center_px: tuple[float, float] = Field(description="x, y of the box's centre in frame pixels")
    bbox_mm: tuple[float, float, float, float] | None = Field(None, description="x0, y0, x1, y1 in mm")
    center_mm: tuple[float, float] | None = None
    width_mm: float | None = Field(None, ge=0.0, description="Extent along x (across the frame: transverse)")
    height_mm: float | None = Field(None, ge=0.0, description="Extent along y (into depth: anteroposterior)")

    @model_validator(mode="after")
    def _box_ordered_and_measured_together(self) -> ThyroidDetection:
        x0, y0, x1, y1 = self.bbox_px
        if not (x0 < x1 and y0 < y1):
            raise ValueError(f"bbox_px {list(self.bbox_px)} is not x0 < x1, y0 < y1")
        measured = {self.bbox_mm is None, self.center_mm is None, self.width_mm is None, self.height_mm is None}
        if len(measured) != 1:
            raise ValueError("bbox_mm, center_mm, width_mm and height_mm are given together or not at all")
        return self


class ThyroidMalignancyResult(BaseModel):
    """Malignancy probability of one thyroid nodule on one B-mode frame, its ACR TI-RADS band and recommendation."""

    malignancy_probability: float = Field(ge=0.0, le=1.0)
    risk_band: RiskBand = Field(description="ACR TI-RADS band mapped from the probability (see app/schemas/tirads.py)")
    recommendation: Recommendation
    nodule: ThyroidNodule
    operating_point: OperatingPointUsed
    pixel_spacing_mm: tuple[float, float] | None = Field(None, description="Row and column spacing; null if unknown")
    spacing_source: Literal["ultrasound-regions", "pixel-spacing", "options", "none"]
    quality: Quality | None = QUALITY_FIELD
    uncertainty: ClassificationUncertainty | None = Field(None, description="Test-time augmentation spread of the "
                                                          "malignancy probability; null when uncertainty is off")
    detections: list[ThyroidDetection] = Field(
        default_factory=list, description="A box-detection localiser's boxes above its operating point after NMS, "
        "best first (the nodule scored is the first); empty for the other sources",
    )
    research_use_only: bool

    @model_validator(mode="after")
    def _size_known_with_spacing(self) -> ThyroidMalignancyResult:
        if (self.pixel_spacing_mm is None) != (self.spacing_source == "none"):
            raise ValueError("spacing_source must be 'none' exactly when pixel_spacing_mm is null")
        if (self.pixel_spacing_mm is None) != (self.nodule.max_diameter_mm is None):
            raise ValueError("max_diameter_mm must be given exactly when the pixel spacing is known")
        if self.pixel_spacing_mm is None and self.recommendation.action not in ("size-unknown", "no-fna"):
            raise ValueError("without a size the recommendation cannot apply the size rule")
        return self


class LungVolumes(BaseModel):
    """Volume of each lung's mask in millilitres; left and right are the patient's sides."""

    left: float = Field(ge=0.0)
    right: float = Field(ge=0.0)


class LesionVolumes(BaseModel):
    """Lesion volume inside the lungs in millilitres, by class; total is ground-glass plus consolidation."""

    ggo: float = Field(ge=0.0, description="Ground-glass opacity (about -700 to -400 HU)")
    consolidation: float = Field(ge=0.0, description="Consolidation (about -100 to +50 HU)")
    total: float = Field(ge=0.0)

    @model_validator(mode="after")
    def _total_is_the_sum(self) -> LesionVolumes:
        if abs(self.total - self.ggo - self.consolidation) > 0.02:
            raise ValueError(f"total {self.total} is not ggo {self.ggo} + consolidation {self.consolidation}")
        return self


class InvolvementPercent(BaseModel):
    """Lesion volume as a percentage of lung volume: per lung, and over both lungs for total."""

    left: float = Field(ge=0.0, le=100.0)
    right: float = Field(ge=0.0, le=100.0)
    total: float = Field(ge=0.0, le=100.0)


class ZoneInvolvement(BaseModel):
    """Lesion percentage of one lung in geometric thirds of that lung's height along the patient's
    superior-inferior axis (not anatomical lobes: lobes are not segmented)."""

    upper: float = Field(ge=0.0, le=100.0, description="Superior third of the lung's height")
    middle: float = Field(ge=0.0, le=100.0, description="Middle third of the lung's height")
    lower: float = Field(ge=0.0, le=100.0, description="Inferior third of the lung's height")


class InvolvementByZone(BaseModel):
    left: ZoneInvolvement
    right: ZoneInvolvement


class CovidLesionSegmentationResult(BaseModel):
    """COVID-19 pneumonia lesions (ground-glass opacity, consolidation) in one CT series: volumes and the share
    of each lung involved. No lobe-based CT severity score: lobes are not segmented."""

    series_instance_uid: str
    lung_volume_ml: LungVolumes
    lesion_volume_ml: LesionVolumes
    involvement_percent: InvolvementPercent
    involvement_by_zone: InvolvementByZone = Field(
        description="Per lung, lesion percentage in the upper, middle and lower thirds of that lung's height along "
        "the patient's superior-inferior axis"
    )
    affected_slices: list[int] = Field(
        description="0-based slice indices (series sorted along the slice normal) holding lesion; artifacts "
        "slice-<index:04d>-mask.png and -overlay.png, and slices.json mapping index to SOPInstanceUID"
    )
    spacing_mm: tuple[float, float, float] = Field(description="(column, row, slice) spacing of the series, mm")
    n_slices: int = Field(ge=1, description="Slices in the series; artifact slice-<index:04d>.png shows each")
    definitions: dict[str, str] = Field(description="One sentence per figure saying exactly what it is")
    warnings: list[str] = Field(default_factory=list)
    quality: Quality | None = QUALITY_FIELD
    uncertainty: SegmentationUncertainty | None = Field(None, description="Lesion calls that change under "
                                                        "augmentation (map: uncertainty.nii.gz); null when off")
    research_use_only: bool

    @model_validator(mode="after")
    def _slices_in_range_and_sorted(self) -> CovidLesionSegmentationResult:
        if self.affected_slices != sorted(set(self.affected_slices)):
            raise ValueError("affected_slices must be sorted and distinct")
        if self.affected_slices and (self.affected_slices[0] < 0 or self.affected_slices[-1] >= self.n_slices):
            raise ValueError(f"an affected slice is outside the series' {self.n_slices} slices")
        return self

