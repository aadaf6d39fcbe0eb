"""How far a result can be trusted: the input's quality gate, the model's uncertainty, an input it refused.

Gateway-safe (no worker imports): every task's result carries a `Quality`, and an input that fails its task's
gate gets an `UngradableResult` instead of a grade or score.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


Measure = float | int | bool | str | None


class QualityReason(BaseModel):
    """Why an input cannot be graded, with what to do about it."""

    code: str = Field(pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$", description="Stable kebab-case identifier, "
                      "e.g. no-field-of-view, out-of-focus, slices-too-thick, missing-slices, no-imaging-region")
    detail: str = Field(min_length=1, description="What was measured against which limit, and what to send instead")


class Quality(BaseModel):
    """The input's quality gate: measured before the model speaks, against the model manifest's limits."""

    gradable: bool
    reasons: list[QualityReason] = Field(default_factory=list, description="Empty exactly when gradable")
    measures: dict[str, Measure] = Field(default_factory=dict, description="What the gate measured (see the "
                                         "model card for each measure's meaning and limit)")

    @model_validator(mode="after")
    def _reasons_exactly_when_ungradable(self) -> Quality:
        if self.gradable == bool(self.reasons):
            raise ValueError("an ungradable input needs at least one reason, and a gradable one none")
        return self


class UngradableResult(BaseModel):
    """The result of an input its task's quality gate refused: no grade, score or finding, only the reasons."""

    model_config = ConfigDict(extra="forbid")

    # A plain name, not TaskName: task plug-ins import this module while the registry that builds TaskName loads.
    task: str = Field(description="The registered task whose quality gate refused the input")
    quality: Quality
    research_use_only: bool

    @model_validator(mode="after")
    def _quality_is_ungradable(self) -> UngradableResult:
        if self.quality.gradable:
            raise ValueError("an UngradableResult must carry an ungradable quality")
        return self


class ClassificationUncertainty(BaseModel):
    """Test-time augmentation: the same input under small changes (flips, intensity), run as one batch."""

    method: Literal["test-time-augmentation"] = "test-time-augmentation"
    augmentations: list[str] = Field(min_length=2, description="The first is the unchanged input")
    probability_spread: float = Field(ge=0.0, le=1.0, description="Largest minus smallest probability of the "
                                      "reported finding (referable DR, malignancy) across the augmentations")
    probability_std: float = Field(ge=0.0, le=1.0)
    low_confidence: bool = Field(description="probability_spread reaches the manifest's low_confidence_spread, "
                                 "or the augmentations disagree on the decision at the operating point")
    low_confidence_spread: float = Field(ge=0.0, le=1.0)


class SegmentationUncertainty(BaseModel):
    """Per-voxel disagreement across augmentations, summarised; the map is the uncertainty.nii.gz artifact."""

    method: Literal["test-time-augmentation"] = "test-time-augmentation"
    augmentations: list[str] = Field(min_length=2)
    uncertain_volume_ml: float = Field(ge=0.0, description="Voxels whose lesion/no-lesion call differs across "
                                       "augmentations, in ml")
    uncertain_share_of_lesion: float = Field(ge=0.0, description="uncertain_volume_ml / lesion volume (0 without "
                                             "lesion); above 1 when most disagreement lies outside the lesion")


class FindingSpread(BaseModel):
    id: int = Field(ge=1)
    score_spread: float = Field(ge=0.0, le=1.0, description="Largest minus smallest peak score at the finding "
                                "across the augmentations")
    low_confidence: bool


class DetectionUncertainty(BaseModel):
    method: Literal["test-time-augmentation"] = "test-time-augmentation"
    augmentations: list[str] = Field(min_length=2)
    findings: list[FindingSpread]
    low_confidence_spread: float = Field(ge=0.0, le=1.0)
