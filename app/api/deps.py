"""Dependencies shared by the routes, declared once as Annotated aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.config import Settings
from app.dispatch import Dispatcher
from app.intake.service import Intake
from app.model_repository import ModelRepository
from app.storage.blobs import BlobStore
from app.storage.jobs import JobStore


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _jobs(request: Request) -> JobStore:
    return request.app.state.jobs


def _blobs(request: Request) -> BlobStore:
    return request.app.state.blobs


def _repository(request: Request) -> ModelRepository:
    return request.app.state.repository


def _dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


def _intake(request: Request) -> Intake:
    state = request.app.state
    return Intake(state.settings, state.repository, state.jobs, state.blobs, state.dispatcher)


def _caller(request: Request) -> str:
    # Every caller is the same until API keys arrive; jobs are already stored per caller.
    return "anonymous"


SettingsDep = Annotated[Settings, Depends(_settings)]
JobStoreDep = Annotated[JobStore, Depends(_jobs)]
BlobStoreDep = Annotated[BlobStore, Depends(_blobs)]
RepositoryDep = Annotated[ModelRepository, Depends(_repository)]
DispatcherDep = Annotated[Dispatcher, Depends(_dispatcher)]
IntakeDep = Annotated[Intake, Depends(_intake)]
Caller = Annotated[str, Depends(_caller)]
