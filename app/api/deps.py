"""Dependencies shared by the routes, declared once as Annotated aliases.

All are `async def` although none awaits: FastAPI runs a plain `def` dependency in its thread pool, and
those hops (six on a job submission) cost more than the dependencies themselves, which only read app state
and check a key. Nothing here may block.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from app.api.waiting import FinishedJobWaiter
from app.config import Scope, Settings
from app.errors import Forbidden, RateLimited, Unauthorized
from app.dispatch import Dispatcher
from app.export.outbox import ExportOutbox
from app.export.policy import ExportPolicy
from app.intake.service import Intake
from app.model_repository import ModelRepository
from app.security.keys import Principal
from app.security.rate_limit import retry_after_header
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


async def _principal(
    request: Request,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal:
    presented = x_api_key
    if authorization and authorization.lower().startswith("bearer "):
        presented = authorization[7:].strip()
    principal = request.app.state.keyring.authenticate(presented)
    if principal is None:
        raise Unauthorized(
            "Send a valid API key as `Authorization: Bearer <key>` or `X-API-Key: <key>`",
            headers={"WWW-Authenticate": 'Bearer realm="medimg"'},
        )
    request.state.principal = principal
    wait = request.app.state.rate_limiter.acquire(principal.name)
    if wait > 0:
        raise RateLimited(
            f"Caller {principal.name!r} exceeded {request.app.state.settings.rate_limit_per_minute} requests per "
            f"minute (MEDIMG_RATE_LIMIT_PER_MINUTE); retry after the Retry-After seconds",
            headers={"Retry-After": retry_after_header(wait)},
        )
    return principal


def _scoped(scope: Scope):
    async def check(principal: Annotated[Principal, Depends(_principal)]) -> Principal:
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
