"""DICOMweb (PS3.18): STOW-RS into the service, QIDO-RS and WADO-RS of the result series it writes.

STOW-RS streams the multipart/related body to disk, splits it into instances, groups them by series and hands
each series to the same Intake as POST /v1/jobs; which task runs is the `task` query parameter or the first
matching MEDIMG_ROUTING_RULES rule. The job ids come back in `X-Medimg-Job-Ids`.

QIDO-RS / WADO-RS serve the DICOM artifacts (seg.dcm, sr.dcm) of the caller's finished jobs, found by scanning
the job store: fine for the embedded service, an index table is the next step for large stores.
"""

from __future__ import annotations

import json
import mmap
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Annotated

import pydicom
from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from app.api.deps import BlobStoreDep, ExportPolicyDep, IntakeDep, JobStoreDep, Reader, SettingsDep, Submitter
from app.export.policy import parse_export_to
from app.intake.deflated import BudgetExceeded, inflate_if_deflated
from app.intake.dicom_headers import DEFER_BYTES
from app.intake.routing import route
from app.errors import MedimgError, PayloadTooLarge, RateLimited, UnsuitableInput, UnsupportedMediaType
from app.schemas.jobs import JobPriority, JobStatus
from app.schemas.problems import PROBLEM_MEDIA_TYPE, Problem
from app.security.headers import PATIENT_DATA_HEADERS
from app.security.keys import Principal
from app.security.rate_limit import retry_after_header
from app.schemas.tasks import TaskName
from app.security.keys import Principal

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])


PROBLEM = {"model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}}
DICOM_JSON_CONTENT = {"application/dicom+json": {"schema": {"type": "array", "items": {"type": "object"}}}}
STORE_RESPONSE = {"application/dicom+json": {"schema": {"type": "object"}}}
MULTIPART_CONTENT = {"multipart/related": {"schema": {"type": "string", "format": "binary"}}}
QIDO_RESPONSES = {200: {"description": "Matches, as DICOM JSON", "content": DICOM_JSON_CONTENT},
                  204: {"description": "No match"}}
WADO_RESPONSES = {200: {"description": "The instances, multipart/related; type=\"application/dicom\"",
                        "content": MULTIPART_CONTENT}}
JOB_IDS_HEADER = {"X-Medimg-Job-Ids": {"description": "Comma-separated ids of the queued jobs",
                                        "schema": {"type": "string"}}}
STOW_RESPONSES = {
    200: {"description": "Every instance stored; a job queued per series", "content": STORE_RESPONSE,
          "headers": JOB_IDS_HEADER},
    202: {"description": "Some instances stored, some failed (FailedSOPSequence)", "content": STORE_RESPONSE,
          "headers": JOB_IDS_HEADER},
    409: {"description": "No instance stored (FailedSOPSequence says why)", "content": STORE_RESPONSE},
    400: PROBLEM | {"description": "The multipart/related body cannot be parsed (no boundary, a part unclosed)"},
    413: PROBLEM | {"description": "Body over MEDIMG_MAX_UPLOAD_BYTES, or more parts than MEDIMG_MAX_UPLOAD_FILES"},
    415: PROBLEM | {"description": "Not multipart/related with application/dicom parts"},
    429: PROBLEM | {"description": "The jobs this request would create exceed the rate limit; nothing was stored"},
}
# The body is read as a stream, not parsed by FastAPI, so it is declared here for the OpenAPI document.
STOW_BODY = {"requestBody": {"required": True, "content": {
    'multipart/related; type="application/dicom"': {"schema": {"type": "string", "format": "binary"}}}}}


class ResultInstanceNotFound(MedimgError):
    code, status, title = "result-not-found", 404, "No such result"


def _not_found(study: str, series: str, instance: str | None = None) -> ResultInstanceNotFound:
    what = f"instance {instance!r} of series {series!r}" if instance else f"series {series!r}"
    return ResultInstanceNotFound(f"No result {what} in study {study!r} among your finished jobs")


class MalformedMultipart(MedimgError):
    """PS3.18 maps a body that cannot be parsed to 400, not to the 422 of our form-based API."""

    code, status, title = "malformed-multipart", 400, "Malformed multipart/related body"

DICOM_JSON = "application/dicom+json"
# Failure Reason values (PS3.4 / PS3.18 Annex I): the intake refused the series (unsuitable for the task,
# options, model unavailable), the part is not a DICOM instance, or no task is routed to the series.
STORAGE_FAILED = 0xA700  # Refused: out of resources / processing failure family
CANNOT_UNDERSTAND = 0xC000
NOT_ROUTED = 0xA900  # Data set does not match SOP class: nothing here serves this series


def _uid(value: str) -> dict:
    return {"vr": "UI", "Value": [value]}


def _multipart_boundary(content_type: str) -> str:
    if not content_type.lower().startswith("multipart/related"):
        raise UnsupportedMediaType(f"STOW-RS takes multipart/related; type=\"application/dicom\", not {content_type!r}")
    params = dict(
        (k.strip().lower(), v.strip().strip('"')) for k, _, v in (p.partition("=") for p in content_type.split(";")[1:])
    )
    part_type = params.get("type", "application/dicom").lower()
    if part_type != "application/dicom":
        raise UnsupportedMediaType(f"STOW-RS here takes type=\"application/dicom\" parts, not {part_type!r}")
    if not params.get("boundary"):
        raise MalformedMultipart("The multipart/related Content-Type has no boundary parameter")
    return params["boundary"]


def _split_parts(body: Path, boundary: str, out_dir: Path, max_parts: int) -> list[Path]:
    """Each part's payload to its own file; the body is mapped, not read into memory."""
    delimiter = b"--" + boundary.encode()
    paths = []
    with body.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        position = data.find(delimiter)
        while position >= 0:
            start = position + len(delimiter)
            if data[start:start + 2] == b"--":
                break
            headers_end = data.find(b"\r\n\r\n", start)
            following = data.find(b"\r\n" + delimiter, headers_end)
            if headers_end < 0 or following < 0:
                raise MalformedMultipart("The multipart/related body is truncated (a part has no closing boundary)")
            if len(paths) >= max_parts:
                raise PayloadTooLarge(f"The STOW-RS request holds more than {max_parts} parts "
                                      "(MEDIMG_MAX_UPLOAD_FILES); send the instances in several requests")
            path = out_dir / f"part-{len(paths):05d}.dcm"
            path.write_bytes(data[headers_end + 4:following])
            paths.append(path)
            position = following + 2
    if not paths:
        raise MalformedMultipart("The multipart/related body holds no part")
    return paths


def _store(body: Path, boundary: str, work: Path, task: TaskName | None, priority: JobPriority | None, rules,
           intake, caller: Principal, base: str, destinations=lambda routed: [], charge_jobs=lambda jobs: None):
    """`charge_jobs(n)` counts the jobs the request will create against the caller's rate limit (the request
    itself paid for one) and raises when they exceed it, before any is created."""
    parts = _split_parts(body, boundary, work, intake.settings.max_upload_files)
    referenced, failed, job_ids = [], [], []
    series: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    max_bytes = intake.settings.max_upload_bytes
    # What the parts hold, then what inflating deflated ones adds: the same budget as an upload's.
    used = sum(path.stat().st_size for path in parts)
    for index, path in enumerate(parts):
        try:
            # pydicom would inflate a deflated data set whole in memory, even with stop_before_pixels: it is
            # inflated here first, streamed to disk under the upload limit (as intake does for uploads).
            used += inflate_if_deflated(path, max_bytes - used, f"part #{index + 1}")
        except BudgetExceeded as exc:
            raise PayloadTooLarge(
                f"part #{index + 1} is a deflated data set that inflates past {max_bytes} bytes with the rest of "
                "the request (MEDIMG_MAX_UPLOAD_BYTES, which counts inflated bytes too); send it uncompressed, "
                f"or fewer instances per request (inflated {exc.inflated} bytes before stopping)") from None
        except UnsuitableInput:  # a corrupt or truncated deflate stream
            failed.append(({}, CANNOT_UNDERSTAND))
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # Large values stay on disk: a header costs kilobytes, whatever the part holds.
                header = pydicom.dcmread(path, stop_before_pixels=True, defer_size=DEFER_BYTES)
            if not all(k in header for k in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")):
                raise ValueError("not a storable instance")
        except Exception:  # not DICOM, or no identity: the standard's "cannot understand"
            failed.append(({}, CANNOT_UNDERSTAND))
            continue
        series[header.SeriesInstanceUID].append((path, header))
    study_uid = None
    routings = {series_uid: route(instances[0][1], rules) for series_uid, instances in series.items()}
    charge_jobs(sum(1 for routing in routings.values() if (task or routing.task) is not None))
    for series_uid, instances in series.items():
        first = instances[0][1]
        study_uid = study_uid or first.StudyInstanceUID
        routing = routings[series_uid]
        chosen = task or routing.task
        status = None
        if chosen is None:
            status = NOT_ROUTED
        else:
            streams = [path.open("rb") for path, _ in instances]
            try:
                export_to = destinations(list(routing.export_to) if routing.task == chosen else [])
                job, _ = intake.accept(chosen, streams, None, caller.name,
                                       priority=priority or routing.priority or caller.priority, export_to=export_to)
                job_ids.append(job.id)
            except MedimgError:
                status = STORAGE_FAILED
            finally:
                for stream in streams:
                    stream.close()
        for _, header in instances:
            item = {"00081150": _uid(header.SOPClassUID), "00081155": _uid(header.SOPInstanceUID)}
            if status is None:
                item["00081190"] = {"vr": "UR", "Value": [
                    f"{base}/studies/{header.StudyInstanceUID}/series/{series_uid}/instances/{header.SOPInstanceUID}"]}
                referenced.append(item)
            else:
                failed.append((item, status))
    document: dict = {}
    if study_uid:
        document["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study_uid}"]}
    if referenced:
        document["00081199"] = {"vr": "SQ", "Value": referenced}
    if failed:
        document["00081198"] = {"vr": "SQ", "Value": [
            item | {"00081197": {"vr": "US", "Value": [reason]}} for item, reason in failed]}
    if not referenced:
        code = 409
    elif failed:
        code = 202
    else:
        code = 200
    return document, code, job_ids


@router.post("/studies", summary="STOW-RS: store instances; each series queues its routed task",
             response_class=Response, responses=STOW_RESPONSES, openapi_extra=STOW_BODY)
async def store_instances(request: Request, intake: IntakeDep, caller: Submitter, settings: SettingsDep,
                          export_policy: ExportPolicyDep,
                          task: Annotated[TaskName | None, Query(description="Run this task on every series")] = None,
                          priority: Annotated[JobPriority | None, Query(
                              description="stat or routine for every series; default: the routing rules' priority, "
                              "else the API key's")] = None,
                          export_to: Annotated[str | None, Query(
                              max_length=4096, description="Export destinations beside the routing rule's and "
                              "the key's defaults, comma-separated")] = None):
    boundary = _multipart_boundary(request.headers.get("content-type", ""))
    requested = parse_export_to(export_to)
    export_policy.destinations(caller, requested)  # refused (403/422) before the body is read

    def destinations(routed: list[str]) -> list[str]:
        return export_policy.destinations(caller, requested, routed)

    with tempfile.TemporaryDirectory(dir=settings.data_dir) as work_dir:
        work = Path(work_dir)
        body = work / "body"
        with body.open("wb") as handle:
            async for chunk in request.stream():
                handle.write(chunk)
        document, code, job_ids = await run_in_threadpool(
            _store, body, boundary, work, task, priority, settings.routing_rules, intake, caller,
            # Never from the Host header, which the caller writes.
            (settings.public_base_url or "").rstrip("/") + "/dicomweb", destinations,
            _job_charger(request, caller.name))
    headers = {"X-Medimg-Job-Ids": ",".join(job_ids)} if job_ids else {}
    return Response(json.dumps(document), status_code=code, media_type=DICOM_JSON, headers=headers)


def _job_charger(request: Request, caller: str):
    limiter, settings = request.app.state.rate_limiter, request.app.state.settings

    def charge(jobs: int) -> None:
        wait = limiter.acquire(caller, jobs - 1) if jobs > 1 else 0.0
        if wait > 0:
            raise RateLimited(
                f"This STOW-RS request would create {jobs} jobs (one per series); with the requests before it that "
                f"exceeds {settings.rate_limit_per_minute} a minute (MEDIMG_RATE_LIMIT_PER_MINUTE). Nothing was "
                "stored; send fewer series per request, after the Retry-After seconds",
                headers={"Retry-After": retry_after_header(wait)})

    return charge


# --- QIDO-RS / WADO-RS of result instances ------------------------------------------------------------


def _result_instances(jobs, blobs, caller: Principal):
    """(header, artifact key) of every DICOM artifact of the succeeded jobs the caller may read."""
    for job in jobs.iter_jobs():
        if not caller.may_read(job.caller) or job.status is not JobStatus.SUCCEEDED:
            continue
        for artifact in job.artifacts:
            if artifact.media_type == "application/dicom":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    header = pydicom.dcmread(blobs.local_path(artifact.key), stop_before_pixels=True)
                yield header, artifact.key


def _matches(header, study=None, series=None, instance=None) -> bool:
    return ((study is None or header.StudyInstanceUID == study)
            and (series is None or header.SeriesInstanceUID == series)
            and (instance is None or header.SOPInstanceUID == instance))


def _qido_json(header: pydicom.Dataset, level: str) -> dict:
    keep = ["StudyInstanceUID", "PatientID", "StudyDate", "AccessionNumber"]
    if level in ("series", "instances"):
        keep += ["SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription"]
    if level == "instances":
        keep += ["SOPClassUID", "SOPInstanceUID", "InstanceNumber"]
    subset = pydicom.Dataset()
    for keyword in keep:
        if keyword in header:
            setattr(subset, keyword, header[keyword].value)
    return subset.to_json_dict()


def _query(jobs, blobs, caller, level, study=None, series=None):
    seen, out = set(), []
    for header, _ in _result_instances(jobs, blobs, caller):
        if not _matches(header, study, series):
            continue
        key = {"studies": header.StudyInstanceUID, "series": header.SeriesInstanceUID,
               "instances": header.SOPInstanceUID}[level]
        if key not in seen:
            seen.add(key)
            out.append(_qido_json(header, level))
    return out


def _json(payload) -> Response:
    if not payload:
        return Response(status_code=204)  # a 204 carries no body, not even []
    return Response(json.dumps(payload), media_type=DICOM_JSON)


@router.get("/studies", summary="QIDO-RS: studies with results",
            response_class=Response, responses=QIDO_RESPONSES)
async def search_studies(jobs: JobStoreDep, blobs: BlobStoreDep, caller: Reader,
                         StudyInstanceUID: str | None = None):  # noqa: N803 - the DICOM attribute keyword
    return _json(await run_in_threadpool(_query, jobs, blobs, caller, "studies", StudyInstanceUID))


@router.get("/studies/{study}/series", summary="QIDO-RS: result series of a study",
            response_class=Response, responses=QIDO_RESPONSES)
async def search_series(study: str, jobs: JobStoreDep, blobs: BlobStoreDep, caller: Reader):
    return _json(await run_in_threadpool(_query, jobs, blobs, caller, "series", study))


@router.get("/studies/{study}/series/{series}/instances", summary="QIDO-RS: result instances of a series",
            response_class=Response, responses=QIDO_RESPONSES)
async def search_instances(study: str, series: str, jobs: JobStoreDep, blobs: BlobStoreDep, caller: Reader):
    return _json(await run_in_threadpool(_query, jobs, blobs, caller, "instances", study, series))


def _multipart(paths: list[Path]) -> Response:
    boundary = "medimg-dicomweb-boundary"
    chunks = []
    for path in paths:
        chunks += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), path.read_bytes(), b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return Response(b"".join(chunks), headers=PATIENT_DATA_HEADERS,
                    media_type=f'multipart/related; type="application/dicom"; boundary={boundary}')


def _retrieve(jobs, blobs, caller, study, series=None, instance=None):
    return [blobs.local_path(key) for header, key in _result_instances(jobs, blobs, caller)
            if _matches(header, study, series, instance)]


def _metadata(paths: list[Path]) -> list[dict]:
    return [pydicom.dcmread(p, stop_before_pixels=True).to_json_dict() for p in paths]


@router.get("/studies/{study}/series/{series}/instances/{instance}", summary="WADO-RS: one result instance",
            response_class=Response, responses=WADO_RESPONSES)
async def retrieve_instance(study: str, series: str, instance: str, jobs: JobStoreDep, blobs: BlobStoreDep,
                            caller: Reader):
    paths = await run_in_threadpool(_retrieve, jobs, blobs, caller, study, series, instance)
    if not paths:
        raise _not_found(study, series, instance)
    return _multipart(paths)


@router.get("/studies/{study}/series/{series}", summary="WADO-RS: a result series",
            response_class=Response, responses=WADO_RESPONSES)
async def retrieve_series(study: str, series: str, jobs: JobStoreDep, blobs: BlobStoreDep, caller: Reader):
    paths = await run_in_threadpool(_retrieve, jobs, blobs, caller, study, series)
    if not paths:
        raise _not_found(study, series)
    return _multipart(paths)


@router.get("/studies/{study}/series/{series}/metadata", summary="WADO-RS: metadata of a result series",
            response_class=Response, responses=QIDO_RESPONSES)
async def retrieve_series_metadata(study: str, series: str, jobs: JobStoreDep, blobs: BlobStoreDep,
                                   caller: Reader):
    paths = await run_in_threadpool(_retrieve, jobs, blobs, caller, study, series)
    if not paths:
        raise _not_found(study, series)
    return _json(await run_in_threadpool(_metadata, paths))
