"""All configuration, from MEDIMG_* environment variables, in one Settings class."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.schemas.tasks import TaskName

REPO_ROOT = Path(__file__).resolve().parent.parent
Scope = Literal["submit", "read", "admin"]
Priority = Literal["stat", "routine"]
DestinationName = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]


class ApiKey(BaseModel):
    """A caller's key, stored as the sha256 of the secret; the secret itself is never kept."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$", description="Who the caller is, in jobs and audit lines")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: list[Scope] = Field(default_factory=lambda: ["submit", "read"])
    priority: Priority = Field("routine", description="Priority of this caller's jobs when a request names none")
    export_to: list[DestinationName] = Field(
        default_factory=list, description="Export destinations every job of this key is sent to"
    )
    may_export_to: list[DestinationName] = Field(
        default_factory=list, description="Further destinations a request of this key may name in `export_to`"
    )


class RoutingRule(BaseModel):
    """Which task, or which priority, a series stored through DICOMweb or DIMSE gets: every given field must
    match. The first matching rule that names a task gives the task; the first that names a priority, the priority.
    """

    task: str | None = Field(None, description="Task name, e.g. lung-nodule-detection")
    priority: Priority | None = Field(None, description="stat or routine")
    modality: str | None = None
    body_part_examined: str | None = None
    series_description: str | None = Field(None, description="Regular expression searched in SeriesDescription")
    sop_class_uid: str | None = None
    calling_ae_title: str | None = Field(None, description="DIMSE only: the sender's AE title, e.g. ED_CT")
    attributes: dict[str, str] = Field(
        default_factory=dict, description='Other attributes by keyword, each value a regular expression the whole '
        'value must match, e.g. {"StationName": "ED-.*"}',
    )
    export_to: list[DestinationName] = Field(
        default_factory=list, description="Export destinations of the jobs this rule routes"
    )

    @model_validator(mode="after")
    def _names_an_outcome(self) -> RoutingRule:
        if self.task is None and self.priority is None:
            raise ValueError("a MEDIMG_ROUTING_RULES rule must name a task, a priority or both")
        return self


class Lane(BaseModel):
    """Tasks that share a bounded number of the embedded pool's threads."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")
    tasks: list[str] = Field(min_length=1)
    max_threads: int | None = Field(
        None, ge=1, description="Most pool threads its jobs hold at once; default all but one, so that tasks of "
        "other lanes always find a thread",
    )


class DimseTls(BaseModel):
    """TLS for a DIMSE peer (DICOM PS3.15 B.1); files, so no secret sits in the environment."""

    ca_file: Path = Field(description="CA bundle the peer's certificate is checked against")
    cert_file: Path | None = Field(None, description="Our client certificate, if the peer asks for one")
    key_file: Path | None = None
    check_hostname: bool = True


class DimseDestination(BaseModel):
    """A PACS or archive reached by DIMSE C-STORE."""

    kind: Literal["dimse"]
    name: DestinationName
    ae_title: str = Field(min_length=1, max_length=16, description="The peer's (called) AE title")
    host: str
    port: int = Field(ge=1, le=65535)
    calling_ae_title: str = Field("MEDIMG", min_length=1, max_length=16, description="Our AE title")
    tls: DimseTls | None = None
    include_sources: bool = Field(False, description="Also send the job's DICOM inputs (archives without them)")


class DicomwebDestination(BaseModel):
    """A DICOMweb archive reached by STOW-RS: `url` is its service root (…/dicom-web)."""

    kind: Literal["dicomweb"]
    name: DestinationName
    url: str = Field(pattern=r"^https?://", description="DICOMweb service root; STOW-RS posts to <url>/studies")
    auth_header_file: Path | None = Field(
        None, description="File holding one header line, e.g. `Authorization: Bearer …`; read at each send"
    )
    include_sources: bool = Field(False, description="Also send the job's DICOM inputs (archives without them)")


ExportDestination = Annotated[DimseDestination | DicomwebDestination, Field(discriminator="kind")]


class DimsePeer(BaseModel):
    """A DICOM node allowed to send to `medimg dicom-listener`, and the caller its jobs belong to."""

    ae_title: str = Field(pattern=r"^[ -~]{1,16}$", description="Calling AE title the peer presents")
    address: str = Field(description="The peer's IP address or network (CIDR) the association must come from")
    caller: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$", description="Owner of the jobs, as an API key name")

    @field_validator("address")
    @classmethod
    def _network(cls, value: str) -> str:
        import ipaddress

        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"DIMSE peer address {value!r} must be an IP address or CIDR network") from None
        return value


class ShadowModel(BaseModel):
    """A candidate model run beside the served one on a sample of a task's jobs; its results reach admins only."""

    model_id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    version: int | None = Field(None, ge=1, description="Default: the version the repository serves")
    sample_rate: float = Field(0.1, gt=0.0, le=1.0, description="Fraction of the task's jobs also run in shadow")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDIMG_", extra="ignore")

    environment: str = Field("development", description="development or production")
    data_dir: Path = Field(Path("./var"), description="Job store, blobs and staging live here in embedded mode")
    model_repository: Path = Field(REPO_ROOT / "models", description="Triton-style <model-id>/<version>/ tree")
    task_models: dict[str, str] = Field(
        default_factory=dict, description='Which model serves a task when several could, e.g. {"dr-grading": "my-dr"}'
    )
    model_versions: dict[str, int] = Field(
        default_factory=dict, description='Pinned versions, e.g. {"dr-grading-reference": 1}; highest otherwise'
    )
    site_config: Path | None = Field(
        None, description="A site's operating points (JSON, written by `medimg eval --choose-operating-point`), laid "
        "over the manifest of the exact model they were measured on; the manifest file is left as it is"
    )
    shadow_models: dict[str, ShadowModel] = Field(
        default_factory=dict, description='Candidate models run in shadow, by task, e.g. {"dr-grading": '
        '{"model_id": "dr-grading-reference", "version": 2, "sample_rate": 0.1}}; `medimg eval --shadow` reports '
        "their agreement with the served model"
    )
    redis_url: str | None = Field(None, description="When set, dispatch through Celery and keep job state in Redis")
    broker_url: str | None = Field(
        None, description="Celery broker when it is not the job store's Redis, e.g. amqp://user:pass@rabbitmq:5672/medimg "
        "(RabbitMQ); default MEDIMG_REDIS_URL. Job state stays in MEDIMG_REDIS_URL either way"
    )

    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = Field(2 * 1024**3, ge=1, description="Per request; larger uploads get 413")
    max_upload_files: int = Field(2000, ge=1, description="Files in one upload, ZIP members included")
    max_image_pixels: int = Field(
        40_000_000, ge=1, le=170_000_000, description="Largest picture or DICOM frame, in rows x columns: 40 MP "
        "holds any fundus camera or ultrasound frame and costs a worker about 120 MB decoded (RGB)"
    )
    max_volume_voxels: int = Field(
        600_000_000, ge=1, description="Largest DICOM file in rows x columns x frames (a 512x512 multi-frame CT of "
        "2,000 frames is 524 M)"
    )
    max_zip_ratio: float = Field(
        1000.0, gt=1, description="Largest declared unpacked/packed size of a ZIP member; above it the ZIP is refused"
    )
    max_options_bytes: int = Field(16_384, ge=2, description="Longest `options` JSON")
    max_wait_seconds: float = Field(60.0, ge=0, description="Longest ?wait= long poll")
    body_read_timeout_seconds: float = Field(
        30.0, gt=0, description="Longest pause between two chunks of a request body (slow uploads get 408); also "
        "the grace period before MEDIMG_BODY_MIN_BYTES_PER_SECOND applies"
    )
    body_deadline_seconds: float = Field(
        900.0, gt=0, description="Longest time a whole request body may take (2 GB at 20 Mbit/s), whatever its pace"
    )
    body_min_bytes_per_second: int = Field(
        16_384, ge=0, description="Slowest average pace of a request body once MEDIMG_BODY_READ_TIMEOUT_SECONDS have "
        "passed (408 below it); 0 turns the check off"
    )
    public_base_url: str | None = Field(
        None, description="Absolute URL callers reach the service at (e.g. https://medimg.hospital.org), used in "
        "DICOMweb retrieve URLs; relative URLs when unset. The Host header is never trusted for them"
    )

    api_keys: list[ApiKey] = Field(
        default_factory=list, description='JSON list of {"name", "sha256", "scopes"}; `medimg new-key` makes one'
    )
    api_keys_file: Path | None = Field(None, description="A JSON file of the same list, e.g. a mounted Secret")
    rate_limit_per_minute: int = Field(
        600, ge=1, description="Requests per API key per minute (burst the same); a STOW-RS request counts once per "
        "job it creates"
    )
    unauthenticated_rate_limit_per_minute: int = Field(
        30, ge=1, description="Requests without a valid key, per client address per minute; then 429"
    )
    retention_input_hours: float = Field(24.0, gt=0, description="Inputs of finished jobs are purged after this")
    retention_job_hours: float = Field(
        168.0, gt=0, description="Finished jobs with their results and artifacts are purged after this"
    )
    purge_interval_seconds: float = Field(600.0, gt=0)
    deidentify_inputs: bool = Field(False, description="Strip patient identifiers from stored DICOM inputs")
    webhook_secret: str | None = Field(None, description="Standard Webhooks secret (whsec_<base64>) for signing")
    webhook_allowed_networks: list[str] = Field(
        default_factory=list,
        description="CIDRs callbacks may reach; empty allows public addresses only (never link-local or metadata)",
    )
    webhook_max_attempts: int = Field(6, ge=1)
    webhook_timeout_seconds: float = Field(10.0, gt=0, description="Longest wait for one webhook delivery attempt")

    routing_rules: list[RoutingRule] = Field(
        default_factory=list,
        description='DICOMweb STOW-RS routing, a JSON list, e.g. [{"modality": "CT", "task": "lung-nodule-detection"}]',
    )

    export_destinations: list[ExportDestination] = Field(
        default_factory=list,
        description='Where DICOM results are sent, a JSON list: {"name", "kind": "dimse", "ae_title", "host", "port", '
        '"tls"?} or {"name", "kind": "dicomweb", "url", "auth_header_file"?}',
    )
    export_max_attempts: int = Field(8, ge=1, description="Attempts before an export is dead-lettered")
    export_retry_first_seconds: float = Field(5.0, gt=0, description="Wait before the first retry; doubles after")
    export_retry_max_seconds: float = Field(600.0, gt=0, description="Longest wait between two attempts")
    export_timeout_seconds: float = Field(60.0, gt=0, description="Network timeout of one export call")
    export_poll_seconds: float = Field(1.0, gt=0, description="How often the gateway looks for exports due")
    export_probe_seconds: float = Field(30.0, gt=0, description="How often destinations are probed for /readyz")

    embedded_workers: int = Field(
        4, ge=1, le=64, description="Threads of the in-process worker pool; they preprocess in parallel and "
        "share model runs through micro-batching"
    )
    embedded_lanes: list[Lane] = Field(
        default_factory=lambda: [Lane(name="ct", tasks=["lung-nodule-detection", "covid-lesion-segmentation"])],
        description="Lanes of the embedded pool, a JSON list of {name, tasks, max_threads}; a task in no lane has "
        "one of its own, named after it, that may use every thread. A free thread goes to the lane with STAT (or "
        "aged) work first, then to the lane holding the fewest threads. Default: CT tasks share all threads but "
        "one, so photos and ultrasound frames never wait behind CT volumes",
    )
    priority_aging_seconds: float = Field(
        300.0, gt=0, description="A STAT job goes ahead of routine jobs of its task queued less than this long "
        "before it; a routine job that has waited this long is served like a STAT one (no starvation)",
    )
    batch_max_rows: int = Field(
        8, ge=1, description="Micro-batching: most rows one session run takes from concurrent jobs (1 turns it off)"
    )
    batch_max_wait_ms: float = Field(
        0.0, ge=0, description="Micro-batching: how long a batch waits for company; 0 batches only what is "
        "already waiting, so an idle service adds no latency"
    )
    inference_threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads; 0 lets it choose")
    inference_parallel_runs: int = Field(
        1, ge=1, le=64, description="Session runs of one model that may execute at once in a worker process (as "
        "Triton's instance count). On a CPU, MEDIMG_INFERENCE_THREADS=1 with this set to the number of cores "
        "gives large models the most throughput; one run on all cores gives a single job the least latency"
    )
    inference_thread_spinning: bool = Field(
        False, description="Let ONNX Runtime's idle threads spin for the next run. Off by default: spinning threads "
        "take the cores that decode and preprocess the next jobs (see bench.dr)"
    )
    providers: list[str] | None = Field(
        None, description="ONNX Runtime providers to try in order; default TensorRT, CUDA, then CPU"
    )
    require_provider: str | None = Field(
        None, description="e.g. CUDAExecutionProvider: a worker whose sessions did not get it (ONNX Runtime falls "
        "back to the CPU silently) never reports ready, runs no job and stops"
    )

    task_soft_time_limit: int = Field(540, ge=1, description="Seconds before a job is asked to stop")
    task_time_limit: int = Field(600, ge=1, description="Seconds before a job's worker process is killed")
    max_deliveries: int = Field(3, ge=1, description="Times a job may be started before it fails for good")
    lost_job_check_seconds: float = Field(30.0, gt=0, description="How often the gateway looks for lost messages")
    lost_job_grace_seconds: float = Field(
        60.0, gt=0, description="A queued job whose message is in no queue for this long is dispatched again"
    )
    worker_heartbeat_seconds: float = Field(10.0, gt=0)
    worker_queues: list[str] | None = Field(None, description="Queues (task names) a Celery worker consumes")
    dimse_quiet_seconds: float = Field(
        10.0, gt=0, description="medimg dicom-listener: a series with no new instance for this long is complete"
    )
    dimse_peers: list[DimsePeer] = Field(
        default_factory=list, description='medimg dicom-listener: who may send, a JSON list of {"ae_title", '
        '"address", "caller"}; others are refused at association. Required to listen beyond loopback'
    )
    dimse_tls_cert: Path | None = Field(None, description="medimg dicom-listener: PEM certificate; with the key, "
                                        "the listener speaks DICOM over TLS only")
    dimse_tls_key: Path | None = Field(None, description="PEM private key of MEDIMG_DIMSE_TLS_CERT")
    dimse_tls_ca: Path | None = Field(None, description="PEM CA bundle; when set, peers must present a certificate "
                                      "it signed")
    worker_pool: Literal["prefork", "threads"] = Field(
        "prefork", description="prefork: one job per process, isolated; threads: jobs share one process and "
        "its models, so their inference is micro-batched"
    )
    worker_heartbeat_file: Path | None = Field(
        None, description="File each warmed worker process touches every heartbeat; `medimg worker-probe` reads it"
    )
    worker_metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Port of a Celery worker's /metrics (all its processes); unset: none"
    )
    worker_metrics_host: str = Field("127.0.0.1", description="Bind address of the worker's /metrics")

    blob_url: str | None = Field(
        None, description="Blob store: file:///path or s3://bucket/prefix; default a folder under MEDIMG_DATA_DIR"
    )
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, Ceph); default AWS")
    s3_region: str | None = Field(None, description="S3 region; default from the AWS configuration")
    s3_access_key_id: str | None = Field(None, description="Default: the AWS credential chain (env, role)")
    s3_secret_access_key: SecretStr | None = None

    @field_validator("environment")
    @classmethod
    def _known_environment(cls, value: str) -> str:
        if value not in {"development", "production"}:
            raise ValueError(f"MEDIMG_ENVIRONMENT={value!r} must be 'development' or 'production'")
        return value

    @field_validator("shadow_models")
    @classmethod
    def _shadow_tasks_known(cls, value: dict[str, ShadowModel]) -> dict[str, ShadowModel]:
        unknown = sorted(set(value) - {t.value for t in TaskName})
        if unknown:
            raise ValueError(f"MEDIMG_SHADOW_MODELS: {unknown[0]!r} is not a task; tasks are "
                             f"{', '.join(t.value for t in TaskName)}")
        return value

    @field_validator("blob_url")
    @classmethod
    def _known_blob_scheme(cls, value: str | None) -> str | None:
        if value is not None and not (value.startswith("file:///") or value.startswith("s3://")):
            raise ValueError(f"MEDIMG_BLOB_URL={value!r} must start with file:/// (absolute path) or s3://bucket")
        return value

    @field_validator("task_time_limit")
    @classmethod
    def _hard_limit_after_soft(cls, value: int, info) -> int:
        soft = info.data.get("task_soft_time_limit")
        if soft is not None and value <= soft:
            raise ValueError(f"MEDIMG_TASK_TIME_LIMIT={value} must exceed MEDIMG_TASK_SOFT_TIME_LIMIT={soft}")
        return value

    @field_validator("broker_url")
    @classmethod
    def _known_broker_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://", "amqp://", "amqps://")):
            raise ValueError(f"MEDIMG_BROKER_URL={value.split('@')[-1]!r} must start with redis://, rediss://, unix://, "
                             "amqp:// or amqps://")
        return value

    @model_validator(mode="after")
    def _export_names_known(self) -> Settings:
        names = [d.name for d in self.export_destinations]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"MEDIMG_EXPORT_DESTINATIONS: names must be unique; repeated: {repeated}")
        for index, rule in enumerate(self.routing_rules):
            check_destinations(rule.export_to, names, f"MEDIMG_ROUTING_RULES[{index}].export_to")
        for key in self.api_keys:
            check_destinations([*key.export_to, *key.may_export_to], names, f"MEDIMG_API_KEYS ({key.name!r})")
        for destination in self.export_destinations:
            if (self.environment == "production" and isinstance(destination, DicomwebDestination)
                    and destination.auth_header_file is not None and not destination.url.startswith("https://")):
                raise ValueError(f"MEDIMG_EXPORT_DESTINATIONS: {destination.name!r} would send its credentials "
                                 f"unencrypted to {destination.url!r}; use https:// in production")
        return self

    def export_destination(self, name: str) -> DimseDestination | DicomwebDestination | None:
        return next((d for d in self.export_destinations if d.name == name), None)

    @property
    def celery_mode(self) -> bool:
        return bool(self.redis_url)

    @property
    def celery_broker_url(self) -> str | None:
        return self.broker_url or self.redis_url

    @property
    def worker_heartbeat_ttl(self) -> float:
        """A worker whose beat is older than this is gone (app/storage/heartbeats.py)."""
        return self.worker_heartbeat_seconds * 3

    @property
    def visibility_timeout(self) -> int:
        # A message unacked for longer than this is redelivered; it must outlast the longest job.
        return self.task_time_limit * 2

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def blob_cache_dir(self) -> Path:
        """Local copies of remote (S3) blobs, for code that needs a file path."""
        return self.data_dir / "blob-cache"

    @property
    def staging_dir(self) -> Path:
        return self.data_dir / "staging"

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "jobs.sqlite3"


def check_destinations(requested: list[str], known: list[str], where: str) -> None:
    unknown = sorted(set(requested) - set(known))
    if unknown:
        raise ValueError(f"{where} names unknown export destination(s) {unknown}; MEDIMG_EXPORT_DESTINATIONS "
                         f"defines {sorted(known) or 'none'}")


@lru_cache
def get_settings() -> Settings:
    return Settings()
