"""Task results. Built from typed parts and validated on construction, so an invalid result cannot exist."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator


class OperatingPointUsed(BaseModel):
    name: str
    threshold: float = Field(ge=0.0, le=1.0)
    sensitivity: float | None = Field(None, description="Measured by the model's maker; see the model card")
    specificity: float | None = None
    overridden: bool = Field(False, description="True when the caller's threshold replaced the manifest's")


class DRGradingResult(BaseModel):
    """Diabetic retinopathy grade on the ICDR scale, from one colour fundus photograph."""

    grade: int = Field(ge=0, le=4, description="ICDR grade: 0 none … 4 proliferative DR")
    grade_name: str
    probabilities: list[float] = Field(min_length=5, max_length=5, description="Per ICDR grade, summing to 1")
    referable: bool = Field(description="Moderate NPDR or worse, at the operating point")
    referable_probability: float = Field(ge=0.0, le=1.0, description="Sum of probabilities of grades 2-4")
    operating_point: OperatingPointUsed
    research_use_only: bool

    @model_validator(mode="after")
    def _probabilities_sum_to_one(self) -> DRGradingResult:
        if abs(sum(self.probabilities) - 1.0) > 1e-3:
            raise ValueError(f"probabilities sum to {sum(self.probabilities):.4f}, not 1")
        return self


TaskResult = DRGradingResult
