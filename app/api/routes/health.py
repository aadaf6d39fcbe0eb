"""Liveness, readiness and metrics for orchestrators and Prometheus."""

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import DispatcherDep, RepositoryDep
from app.api.problems import problem_response
from app.schemas.tasks import TaskName

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Models loaded and warmed; in Celery mode, broker reachable and a worker consuming",
            responses={503: {"description": "Not ready; `detail` says why"}})
async def readyz(request: Request, dispatcher: DispatcherDep, repository: RepositoryDep) -> Response:
    readiness = await run_in_threadpool(dispatcher.readiness)
    # Every registered task, and the model that serves it here (null: installed, but no model for it).
    served = {m.manifest.task.value: f"{m.manifest.id}/{m.manifest.version}" for m in repository.served()}
    readiness.checks["tasks"] = {task.value: served.get(task.value) for task in TaskName}
    if request.app.state.settings.export_destinations:  # informative: a PACS being down does not stop intake
        readiness.checks["export_destinations"] = request.app.state.export_scheduler.reachability()
    if repository.errors:
        readiness.checks["model_errors"] = repository.errors
    if not repository.served():
        readiness.ready = False
        readiness.detail = "No model is installed in the model repository"
    if not readiness.ready:
        return problem_response(503, "not-ready", "Not ready", readiness.detail, request, checks=readiness.checks)
    return JSONResponse({"status": "ready", "detail": readiness.detail, **readiness.checks})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
