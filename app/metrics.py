"""Prometheus metrics of the gateway (and of the embedded worker pool, which runs in the same process).

Labels carry task names, statuses and route templates only — never ids of patients or studies.
"""

from prometheus_client import Counter, Histogram

HTTP_REQUESTS = Counter("medimg_http_requests_total", "HTTP requests", ["method", "route", "status"])
HTTP_LATENCY = Histogram("medimg_http_request_duration_seconds", "HTTP request latency", ["method", "route"])
UPLOAD_BYTES = Counter("medimg_upload_bytes_total", "Bytes of accepted uploads", ["task"])
JOBS_SUBMITTED = Counter("medimg_jobs_submitted_total", "Jobs accepted", ["task"])
JOBS_REJECTED = Counter("medimg_jobs_rejected_total", "Uploads refused at intake", ["task", "code"])
JOBS_FINISHED = Counter("medimg_jobs_finished_total", "Jobs finished", ["task", "status", "failure_kind"])
STAGE_SECONDS = Histogram(
    "medimg_pipeline_stage_seconds", "Duration of pipeline stages", ["task", "stage"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
