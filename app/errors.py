"""Domain errors. Each carries a stable kebab-case code and an HTTP status; one handler renders them.

Details name the offending file, key or value so a person can act on them, and never carry patient data.
"""

from __future__ import annotations

from typing import Any


class MedimgError(Exception):
    code = "internal-error"
    status = 500
    title = "Internal error"

    def __init__(self, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers
        self.extra = extra


class Unauthorized(MedimgError):
    code, status, title = "unauthorized", 401, "API key missing or not recognised"


class Forbidden(MedimgError):
    code, status, title = "forbidden", 403, "Not allowed"


class RateLimited(MedimgError):
    code, status, title = "rate-limited", 429, "Too many requests"


class RequestTimeout(MedimgError):
    code, status, title = "request-timeout", 408, "Request body too slow"


class JobNotFound(MedimgError):
    code, status, title = "job-not-found", 404, "Job not found"


class ArtifactNotFound(MedimgError):
    code, status, title = "artifact-not-found", 404, "Artifact not found"


class PayloadTooLarge(MedimgError):
    code, status, title = "payload-too-large", 413, "Upload too large"


class UnsupportedMediaType(MedimgError):
    code, status, title = "unsupported-media-type", 415, "Unsupported file format"


class InvalidRequest(MedimgError):
    code, status, title = "invalid-request", 422, "Invalid request"


class IdempotencyKeyReused(MedimgError):
    code, status, title = "idempotency-key-reused", 422, "Idempotency-Key reused for another request"


class InvalidOptions(MedimgError):
    code, status, title = "invalid-options", 422, "Invalid task options"


class UnsuitableInput(MedimgError):
    """The upload is well-formed but cannot serve the task (wrong modality, truncated, nothing inside)."""

    code, status, title = "unsuitable-input", 422, "Input cannot serve this task"


class TaskNotServed(MedimgError):
    code, status, title = "task-not-served", 422, "Task not served here"


class ModelNotFound(MedimgError):
    code, status, title = "model-not-found", 404, "Model not found"


class ServiceUnavailable(MedimgError):
    code, status, title = "service-unavailable", 503, "Service unavailable"


class BadInputError(MedimgError):
    """Raised by a pipeline when the input turns out unusable once its pixels are read."""

    code, status, title = "bad-input", 422, "Input could not be processed"


class ModelError(MedimgError):
    code, status, title = "model-error", 500, "Model failed"
