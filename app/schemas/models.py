"""What GET /v1/models says about each loaded model."""

from pydantic import BaseModel

from app.schemas.manifest import InputConstraints, OperatingPoint
from app.schemas.tasks import TaskName


class ModelPublic(BaseModel):
    id: str
    version: int
    task: TaskName
    title: str
    sha256: str
    accepts: InputConstraints
    intended_use: str
    research_use_only: bool
    class_names: list[str]
    operating_points: list[OperatingPoint]
    default_operating_point: str
    metrics: dict[str, float]
    card_url: str


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    count: int
