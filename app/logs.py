"""Structured JSON log lines on stderr. Log job ids and task names, never patient data."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import warnings
import time
from collections.abc import Iterator
from contextlib import contextmanager

# The job a thread (or Celery process) is working on: every line logged meanwhile carries its id and task.
_JOB_FIELDS: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("medimg_job_fields", default=None)


@contextmanager
def job_log_context(job_id: str, task: str | None = None) -> Iterator[None]:
    """Within the block, every log line of this thread or task gets `job_id` (and `task` once known)."""
    token = _JOB_FIELDS.set({"job_id": job_id} | ({"task": str(task)} if task else {}))
    try:
        yield
    finally:
        _JOB_FIELDS.reset(token)


def bind_job_task(task: str) -> None:
    """Adds the task to the current job context once the job record is loaded."""
    fields = _JOB_FIELDS.get()
    if fields is not None:
        _JOB_FIELDS.set(fields | {"task": str(task)})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_fields = _JOB_FIELDS.get()
        if job_fields:
            entry.update(job_fields)
        audit = getattr(record, "audit", None)
        if audit is not None:
            entry["audit"] = audit
        if record.exc_info:
            # Exception types and frames only: exception messages can quote input values.
            entry["exception"] = self.formatException(record.exc_info).splitlines()[-1].split(":")[0]
        return json.dumps(entry)


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pydicom's warnings quote element values, which can be patient names: keep them out of every log.
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?$")
