"""Prometheus metrics of the gateway (and of the embedded worker pool, which runs in the same process).

Labels carry task names, statuses and route templates only — never ids of patients or studies.

Celery workers import the same objects; `medimg worker` switches prometheus_client to multiprocess mode
(PROMETHEUS_MULTIPROC_DIR) before this module is imported, so the prefork children's values add up on the
worker's one /metrics endpoint (MEDIMG_WORKER_METRICS_PORT).
"""

from prometheus_client import Counter, Gauge, Histogram

from app.schemas.tasks import TaskName

HTTP_REQUESTS = Counter("medimg_http_requests_total", "HTTP requests", ["method", "route", "status"])
HTTP_LATENCY = Histogram("medimg_http_request_duration_seconds", "HTTP request latency", ["method", "route"])
UPLOAD_BYTES = Counter("medimg_upload_bytes_total", "Bytes of accepted uploads", ["task"])
JOBS_SUBMITTED = Counter("medimg_jobs_submitted_total", "Jobs accepted", ["task", "priority"])
JOBS_REJECTED = Counter("medimg_jobs_rejected_total", "Uploads refused at intake", ["task", "code"])
JOBS_FINISHED = Counter("medimg_jobs_finished_total", "Jobs finished", ["task", "status", "failure_kind"])
STAGE_SECONDS = Histogram(
    "medimg_pipeline_stage_seconds", "Duration of pipeline stages", ["task", "stage"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
JOBS_STARTED = Counter("medimg_jobs_started_total", "Job starts by a worker (redeliveries count)", ["task"])
QUEUE_WAIT_SECONDS = Histogram(
    "medimg_job_queue_wait_seconds", "From acceptance to a worker's first start of the job", ["task", "priority"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
BATCH_SIZE = Histogram(
    "medimg_inference_batch_size", "Items in one model run (first dimension of the first input)", ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
MODEL_LOAD_SECONDS = Histogram(
    "medimg_model_load_seconds", "Creating a model's ONNX Runtime session", ["model", "provider"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
MODEL_WARMUP_SECONDS = Histogram(
    "medimg_model_warmup_seconds", "A model's warm-up run", ["model", "provider"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
MODEL_PROVIDER = Gauge(
    "medimg_model_provider", "1 for the ONNX Runtime provider a loaded model's session really runs on (its first)",
    ["model", "provider"], multiprocess_mode="max",
)
# Embedded pool only (app/dispatch/lanes.py): head-of-line blocking shows as jobs queued in a lane whose
# running count sits at its cap.
LANE_QUEUED = Gauge("medimg_lane_queued_jobs", "Jobs waiting in a lane of the embedded pool", ["lane", "priority"],
                    multiprocess_mode="livesum")
LANE_RUNNING = Gauge("medimg_lane_running_jobs", "Worker threads of the embedded pool a lane holds", ["lane"],
                     multiprocess_mode="livesum")
EXPORTS = Counter(
    "medimg_exports_total", "Export attempts by destination and outcome (sent, retry, dead)", ["destination", "outcome"]
)

# Every registered task has its series from the start (at zero), so dashboards list installed tasks that have
# not run yet.
for _task in TaskName:
    UPLOAD_BYTES.labels(_task.value)
    JOBS_STARTED.labels(_task.value)
