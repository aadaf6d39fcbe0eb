"""Options and result of chest-xray-findings: what POST /v1/jobs accepts and what the job answers."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

from app.schemas.options import TaskOptions


class ChestXrayFindingsOptions(TaskOptions):
    threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="One probability threshold for every finding, replacing their own"
    )


class ChestXrayFinding(BaseModel):
    name: str = Field(description="The finding, as the model's class name")
    probability: float = Field(ge=0.0, le=1.0)
    threshold: float = Field(ge=0.0, le=1.0, description="This finding's operating point")
    present: bool = Field(description="probability >= threshold")

    @model_validator(mode="after")
    def _present_means_at_threshold(self) -> ChestXrayFinding:
        if self.present != (self.probability >= self.threshold):
            raise ValueError(f"{self.name}: present={self.present} contradicts {self.probability} vs {self.threshold}")
        return self


class ChestXrayFindingsResult(BaseModel):
    """Independent findings on one frontal chest radiograph, each at its own operating point."""

    findings: list[ChestXrayFinding] = Field(min_length=1)
    present: list[str] = Field(description="Names of the findings at or above their threshold")
    thresholds_overridden: bool = Field(description="True when the caller's threshold replaced the model's")
    research_use_only: bool

    @model_validator(mode="after")
    def _present_lists_the_present(self) -> ChestXrayFindingsResult:
        if self.present != [f.name for f in self.findings if f.present]:
            raise ValueError("present must list exactly the findings marked present, in order")
        return self
