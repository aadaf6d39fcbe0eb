"""Per-task options sent as the `options` JSON object of POST /v1/jobs. Unknown keys are refused."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.tasks import TaskName


class TaskOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DRGradingOptions(TaskOptions):
    referable_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Referable-probability threshold replacing the model's operating point"
    )


class LungNoduleDetectionOptions(TaskOptions):
    score_threshold: float | None = Field(None, ge=0.0, le=1.0)
    series_instance_uid: str | None = Field(None, max_length=64)


class CovidLesionSegmentationOptions(TaskOptions):
    series_instance_uid: str | None = Field(None, max_length=64)


class ThyroidMalignancyOptions(TaskOptions):
    frame: int | None = Field(None, ge=0)
    pixel_spacing_mm: float | None = Field(None, gt=0.0, le=10.0)


OPTIONS_BY_TASK: dict[TaskName, type[TaskOptions]] = {
    TaskName.DR_GRADING: DRGradingOptions,
    TaskName.LUNG_NODULE_DETECTION: LungNoduleDetectionOptions,
    TaskName.COVID_LESION_SEGMENTATION: CovidLesionSegmentationOptions,
    TaskName.THYROID_MALIGNANCY: ThyroidMalignancyOptions,
}
