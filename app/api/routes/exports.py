"""Exports of a job's DICOM results: the dead-letter list and resending, for `admin` keys only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from app.api.deps import Admin, ExportsDep, JobStoreDep
from app.errors import MedimgError
from app.schemas.exports import ExportPublic, ExportRecord
from app.schemas.problems import PROBLEM_MEDIA_TYPE, Problem

router = APIRouter(tags=["exports"])
PROBLEM = {"model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}}


class ExportNotFound(MedimgError):
    code, status, title = "export-not-found", 404, "No such export"


class ExportStillOpen(MedimgError):
    code, status, title = "export-still-open", 409, "Export still pending"


class DeadExport(ExportPublic):
    job_id: str


class DeadExportsPublic(BaseModel):
    data: list[DeadExport]
    count: int


def _dead(record: ExportRecord) -> DeadExport:
    return DeadExport(job_id=record.job_id, **ExportPublic.from_record(record).model_dump())


@router.get("/v1/exports/dead", response_model=DeadExportsPublic, summary="Dead-lettered exports, newest first",
            responses={403: PROBLEM})
async def list_dead_exports(exports: ExportsDep, caller: Admin,
                            limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> DeadExportsPublic:
    records = await run_in_threadpool(exports.store.dead, limit)
    return DeadExportsPublic(data=[_dead(r) for r in records], count=len(records))


@router.post("/v1/jobs/{job_id}/exports/{destination}/resend", status_code=202, response_model=ExportPublic,
             summary="Send a dead-lettered (or sent) export again, with a fresh count of attempts",
             responses={403: PROBLEM, 404: PROBLEM, 409: PROBLEM | {"description": "Still pending or sending"}})
async def resend_export(job_id: str, destination: str, jobs: JobStoreDep, exports: ExportsDep,
                        caller: Admin) -> ExportPublic:
    await run_in_threadpool(jobs.get, job_id)  # 404 for a job that is gone
    if await run_in_threadpool(exports.store.get, job_id, destination) is None:
        raise ExportNotFound(f"Job {job_id} has no export to {destination!r}; its document lists its exports")
    record = await run_in_threadpool(exports.resend, job_id, destination)
    if record is None:
        raise ExportStillOpen(f"The export of job {job_id} to {destination!r} is still pending or being sent; "
                              "only a dead-lettered or sent export can be sent again")
    return ExportPublic.from_record(record)
