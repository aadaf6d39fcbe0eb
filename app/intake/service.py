"""Accepting a job: options, staging, format and header checks, storage, dispatch — or nothing at all."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pkgutil import resolve_name
from typing import BinaryIO

from pydantic import ValidationError

from app.config import Settings
from app.dispatch import Dispatcher
from app.errors import IdempotencyKeyReused, InvalidOptions
from app.intake.checks import check_inputs, inspect_inputs
from app.intake.deidentify import deidentify_files
from app.intake.staging import EXTENSIONS, staging_area
from app.model_repository import ModelRepository
from app.plugins import task_plugin
from app.schemas.jobs import InputFile, Job, JobPriority, ModelRef, new_job_id
from app.schemas.options import TaskOptions
from app.schemas.tasks import TaskName
from app.storage.blobs import BlobStore, job_prefix
from app.storage.jobs import JobStore
from app.webhooks import check_callback_url

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Intake:
    settings: Settings
    repository: ModelRepository
    jobs: JobStore
    blobs: BlobStore
    dispatcher: Dispatcher

    def accept(
        self,
        task: TaskName,
        uploads: list[BinaryIO],
        options_json: str | None,
        caller: str,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        job_id: str | None = None,
        priority: JobPriority = JobPriority.ROUTINE,
        export_to: list[str] | None = None,
    ) -> tuple[Job, bool]:
        """Returns the job and whether it is new (False: the same caller sent this idempotency key before).

        `job_id`: the id the new job takes (from `new_job_id`), when the caller must know it beforehand.
        `export_to`: destinations of its DICOM results, already checked (app/export/policy.py)."""
        model = self.repository.for_task(task)
        options = parse_options(task, options_json, self.settings.max_options_bytes)
        settings = self.settings
        if callback_url is not None:
            check_callback_url(callback_url, settings.webhook_allowed_networks)
        with staging_area(settings.staging_dir, settings.max_upload_bytes, settings.max_upload_files,
                          settings.max_zip_ratio) as area:
            for index, upload in enumerate(uploads):
                area.add_upload(upload, index)
            serving = check_inputs(
                inspect_inputs(area.files, settings.max_image_pixels, settings.max_volume_voxels),
                model.manifest.accepts, task, series_instance_uid=getattr(options, "series_instance_uid", None))
            if (intake_check := task_plugin(task).intake_check) is not None:
                resolve_name(intake_check)(serving, model.manifest, options)  # the task's own header checks
            # Only what serves the task is kept: other series of the upload (scouts, a second series) go.
            files = [item.staged for item in serving]

            job_id = job_id or new_job_id()
            if settings.deidentify_inputs:
                deidentify_files([f.path for f in files if f.format == "dicom"], job_id)
            inputs = [
                InputFile(
                    key=f"{job_prefix(job_id)}/inputs/{index:05d}{EXTENSIONS[staged.format]}",
                    format=staged.format,
                    size_bytes=staged.path.stat().st_size,
                )
                for index, staged in enumerate(files)
            ]
            manifest = model.manifest
            job = Job(
                id=job_id,
                task=task,
                model=ModelRef(id=manifest.id, version=manifest.version, sha256=manifest.sha256,
                               research_use_only=manifest.research_use_only),
                options=options.model_dump(mode="json", exclude_none=True),
                inputs=inputs,
                caller=caller,
                priority=priority,
                idempotency_key=idempotency_key,
                request_fingerprint=_fingerprint(task, options, callback_url, area.upload_digests),
                callback_url=callback_url,
                export_to=export_to or [],
            )
            fingerprint = job.request_fingerprint
            job, created = self.jobs.create(job)
            if not created:
                if job.request_fingerprint not in (None, fingerprint):
                    # The IETF Idempotency-Key draft: a key reused with another payload is a client error.
                    raise IdempotencyKeyReused(
                        f"Idempotency-Key {idempotency_key[:64]!r} was used for job {job.id} with other files, task, "
                        "options or callback_url; send a new key for a new request"
                    )
                return job, False
            try:
                for staged, stored in zip(files, inputs, strict=True):
                    self.blobs.put_file(stored.key, staged.path)
                self.dispatcher.submit(job)
            except Exception:
                self.jobs.delete(job.id)
                self.blobs.delete_prefix(job_prefix(job.id))
                raise
        log.info("job %s accepted: task %s, %s, %d input(s)", job.id, task.value, priority.value, len(inputs))
        return job, True


def _fingerprint(task: TaskName, options: TaskOptions, callback_url: str | None, digests: list[str]) -> str:
    request = [task.value, options.model_dump(mode="json", exclude_none=True), callback_url, digests]
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


def parse_options(task: TaskName, options_json: str | None, max_bytes: int = 16_384) -> TaskOptions:
    options_type = task_plugin(task).options
    if options_json is None or not options_json.strip():
        return options_type()
    if len(options_json) > max_bytes:
        raise InvalidOptions(f"`options` is {len(options_json)} characters long, more than {max_bytes} "
                             "(MEDIMG_MAX_OPTIONS_BYTES); task options are a few keys")
    try:
        raw = json.loads(options_json)
    except json.JSONDecodeError as exc:
        raise InvalidOptions(f"`options` is not valid JSON ({exc.msg} at character {exc.pos})") from exc
    except RecursionError:
        raise InvalidOptions("`options` nests too deeply to be task options; send a flat JSON object") from None
    if raw is None:  # JSON null: no options, as the schema allows
        return options_type()
    if not isinstance(raw, dict):
        raise InvalidOptions("`options` must be a JSON object, e.g. {\"referable_threshold\": 0.4}")
    try:
        return options_type.model_validate(raw)
    except ValidationError as exc:
        errors = [
            {"field": "options." + ".".join(str(p) for p in error["loc"]), "message": error["msg"]}
            for error in exc.errors(include_url=False, include_input=False)
        ]
        allowed = ", ".join(options_type.model_fields) or "none"
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise InvalidOptions(f"Invalid options for task {task.value!r}: {detail}. Allowed options: {allowed}",
                             errors=errors) from exc
