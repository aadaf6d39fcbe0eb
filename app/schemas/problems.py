"""RFC 9457 problem details, the body of every error the API returns."""

from pydantic import BaseModel, ConfigDict, Field

PROBLEM_MEDIA_TYPE = "application/problem+json"


class Problem(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = Field("about:blank", description="URI naming the problem type: urn:medimg:problem:<code>")
    title: str
    status: int
    detail: str = Field(description="What went wrong and what to do about it")
    instance: str | None = None
    code: str | None = Field(None, description="Stable kebab-case identifier of the problem")
    errors: list[dict] | None = Field(None, description="Per-field validation errors, when there are several")
