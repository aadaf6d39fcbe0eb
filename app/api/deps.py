"""Dependencies shared by the routes, declared once as Annotated aliases.

All are `async def` although none awaits: FastAPI runs a plain `def` dependency in its thread pool, and
those hops (six on a job submission) cost more than the dependencies themselves, which only read app state
and check a key. Nothing here may block.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from app.api.waiting import FinishedJobWaiter
from app.api.caller_gate import UNAUTHORIZED_DETAIL
from app.config import Scope, Settings
from app.errors import Forbidden, Unauthorized
from app.dispatch import Dispatcher
from app.export.outbox import ExportOutbox
from app.export.policy import ExportPolicy
from app.intake.service import Intake
from app.model_repository import ModelRepository
from app.security.keys import Principal
from app.storage.blobs import BlobStore
from app.storage.jobs import JobStore


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _jobs(request: Request) -> JobStore:
    return request.app.state.jobs


async def _waiter(request: Request) -> FinishedJobWaiter:
    return request.app.state.waiter


async def _blobs(request: Request) -> BlobStore:
    return request.app.state.blobs


async def _repository(request: Request) -> ModelRepository:
    return request.app.state.repository


async def _dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


async def _export_policy(request: Request) -> ExportPolicy:
    return request.app.state.export_policy


async def _exports(request: Request) -> ExportOutbox:
    return request.app.state.exports


async def _intake(request: Request) -> Intake:
    state = request.app.state
    return Intake(state.settings, state.repository, state.jobs, state.blobs, state.dispatcher)


# Declared for the OpenAPI document (its "Authorize" button, and CallerGate's table of what needs a key); the
# values are not read here: CallerGate has already authenticated the caller from the same headers.
_bearer = HTTPBearer(auto_error=False, scheme_name="Bearer", description="`Authorization: Bearer <API key>`")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="ApiKey",
                               description="The API key in `X-API-Key`")


async def require_key(
    request: Request,
    _bearer_credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
    _api_key: Annotated[str | None, Depends(_api_key_header)] = None,
) -> Principal:
    """The caller, which CallerGate (app/api/caller_gate.py) authenticated and rate-limited from the headers
    before the body was read."""
    principal = getattr(request.state, "principal", None)
    if principal is None:  # only when the gate is not installed (an app built without create_app)
        raise Unauthorized(UNAUTHORIZED_DETAIL, headers={"WWW-Authenticate": 'Bearer realm="medimg"'})
    return principal


def _scoped(scope: Scope):
    async def check(principal: Annotated[Principal, Depends(require_key)]) -> Principal:
        if scope not in principal.scopes and "admin" not in principal.scopes:
            raise Forbidden(f"The API key of {principal.name!r} lacks the {scope!r} scope this request needs")
        return principal

    return check


SettingsDep = Annotated[Settings, Depends(_settings)]
JobStoreDep = Annotated[JobStore, Depends(_jobs)]
JobWaiterDep = Annotated[FinishedJobWaiter, Depends(_waiter)]
BlobStoreDep = Annotated[BlobStore, Depends(_blobs)]
RepositoryDep = Annotated[ModelRepository, Depends(_repository)]
DispatcherDep = Annotated[Dispatcher, Depends(_dispatcher)]
IntakeDep = Annotated[Intake, Depends(_intake)]
Submitter = Annotated[Principal, Depends(_scoped("submit"))]
Reader = Annotated[Principal, Depends(_scoped("read"))]
Admin = Annotated[Principal, Depends(_scoped("admin"))]
ExportPolicyDep = Annotated[ExportPolicy, Depends(_export_policy)]
ExportsDep = Annotated[ExportOutbox, Depends(_exports)]
