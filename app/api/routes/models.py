"""/v1/models: the models this service serves, with their intended use and measured metrics."""

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from app.api.deps import Reader, RepositoryDep
from app.errors import ModelNotFound
from app.model_repository import ModelVersion
from app.schemas.models import ModelPublic, ModelsPublic

router = APIRouter(prefix="/v1/models", tags=["models"])


def _public(version: ModelVersion) -> ModelPublic:
    m = version.manifest
    return ModelPublic(
        id=m.id, version=m.version, task=m.task, title=m.title, sha256=m.sha256, accepts=m.accepts,
        intended_use=m.intended_use, research_use_only=m.research_use_only, class_names=m.class_names,
        operating_points=m.operating_points, default_operating_point=m.default_operating_point,
        metrics=m.metrics, card_url=f"/v1/models/{m.id}/card",
    )


@router.get("", response_model=ModelsPublic, summary="List the served models")
async def list_models(repository: RepositoryDep, caller: Reader) -> ModelsPublic:
    data = [_public(v) for v in repository.served()]
    return ModelsPublic(data=data, count=len(data))


@router.get("/{model_id}/card", response_class=PlainTextResponse, summary="The model card (Markdown)",
            responses={200: {"content": {"text/markdown": {"schema": {"type": "string"}}}}})
async def read_model_card(model_id: str, repository: RepositoryDep, caller: Reader) -> PlainTextResponse:
    version = repository.get(model_id)
    if not version.card_path.is_file():
        raise ModelNotFound(f"Model {model_id!r} ships no CARD.md")
    return PlainTextResponse(version.card_path.read_text(encoding="utf-8"), media_type="text/markdown")
