"""Per-task options sent as the `options` JSON object of POST /v1/jobs. Unknown keys are refused.

Each task's registration (app/plugins) names its options class; `TaskOptions` is the base every one extends."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TaskOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


def uncertainty_option() -> bool | None:
    return Field(None, description="Test-time augmentation: extra inference runs whose spread is reported (their "
                 "cost is in stage_seconds.uncertainty); null: the model manifest's default")


def explain_option() -> bool:
    return Field(False, description="Occlusion-sensitivity saliency: a heat-map overlay (saliency.png; for DICOM "
                 "input also saliency.dcm, a Secondary Capture) of where the score depends on the image")


OPERATING_POINT_FIELD = Field(
    None, min_length=1, max_length=64, description="A named operating point of the model (GET /v1/models lists them, "
    "a site's own included) instead of the default one"
)


class DRGradingOptions(TaskOptions):
    referable_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Referable-probability threshold replacing the model's operating point"
    )
    operating_point: str | None = OPERATING_POINT_FIELD
    uncertainty: bool | None = uncertainty_option()
    explain: bool = explain_option()


class LungNoduleDetectionOptions(TaskOptions):
    score_threshold: float | None = Field(None, ge=0.0, le=1.0)
    series_instance_uid: str | None = Field(None, max_length=64)
    uncertainty: bool | None = uncertainty_option()


class CovidLesionSegmentationOptions(TaskOptions):
    series_instance_uid: str | None = Field(None, max_length=64)
    uncertainty: bool | None = uncertainty_option()


class RoiBox(TaskOptions):
    """A caller's box around the nodule: [x0, y0, x1, y1] in pixels of the input frame, ends exclusive."""

    box: tuple[int, int, int, int]

    @model_validator(mode="after")
    def _ordered(self) -> RoiBox:
        x0, y0, x1, y1 = self.box
        if min(self.box) < 0 or x1 <= x0 or y1 <= y0:
            raise ValueError(f"box {list(self.box)} must be [x0, y0, x1, y1] with 0 <= x0 < x1 and 0 <= y0 < y1")
        return self


class ArtifactReference(TaskOptions):
    job_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class RoiMaskArtifact(TaskOptions):
    """A mask PNG (non-zero = nodule, same rows and columns as the frame) from an earlier job of the same caller."""

    mask_artifact: ArtifactReference


class ThyroidMalignancyOptions(TaskOptions):
    operating_point: str | None = OPERATING_POINT_FIELD
    frame: int | None = Field(None, ge=0, description="Frame of a multi-frame DICOM instance, from 0")
    pixel_spacing_mm: float | None = Field(None, gt=0.0, le=10.0)
    roi: RoiBox | RoiMaskArtifact | None = Field(
        None, description='The nodule, given instead of segmenting it: {"box": [x0, y0, x1, y1]} or '
        '{"mask_artifact": {"job_id": ..., "name": ...}}'
    )
    uncertainty: bool | None = uncertainty_option()
    explain: bool = explain_option()

