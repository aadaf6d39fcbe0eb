"""Per-task options sent as the `options` JSON object of POST /v1/jobs. Unknown keys are refused."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.schemas.tasks import TaskName


class TaskOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


OPERATING_POINT_FIELD = Field(
    None, min_length=1, max_length=64, description="A named operating point of the model (GET /v1/models lists them, "
    "a site's own included) instead of the default one"
)


class DRGradingOptions(TaskOptions):
    referable_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Referable-probability threshold replacing the model's operating point"
    )
    operating_point: str | None = OPERATING_POINT_FIELD


class LungNoduleDetectionOptions(TaskOptions):
    score_threshold: float | None = Field(None, ge=0.0, le=1.0)
    series_instance_uid: str | None = Field(None, max_length=64)


class CovidLesionSegmentationOptions(TaskOptions):
    series_instance_uid: str | None = Field(None, max_length=64)


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


OPTIONS_BY_TASK: dict[TaskName, type[TaskOptions]] = {
    TaskName.DR_GRADING: DRGradingOptions,
    TaskName.LUNG_NODULE_DETECTION: LungNoduleDetectionOptions,
    TaskName.COVID_LESION_SEGMENTATION: CovidLesionSegmentationOptions,
    TaskName.THYROID_MALIGNANCY: ThyroidMalignancyOptions,
}
