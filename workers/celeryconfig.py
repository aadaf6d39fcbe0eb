"""Celery settings that lose no work: late acks, requeue when a worker dies, one message in hand at a time."""

from app.config import get_settings
from app.dispatch.queues import task_queues as _task_queues, transport_options
from app.schemas.tasks import RUN_JOB_TASK, TaskName

_settings = get_settings()

broker_url = _settings.celery_broker_url  # Redis, or RabbitMQ (amqp://); job state is in Redis either way
broker_connection_retry_on_startup = True
broker_transport_options = transport_options(_settings)

task_serializer = "json"
accept_content = ["json"]
task_ignore_result = True  # outcomes live in the job store, not in a Celery result backend

task_acks_late = True  # acknowledge after the job ran, so a crash mid-job means redelivery
task_reject_on_worker_lost = True  # a killed child process requeues its message instead of acking it
# (A whole worker killed: RabbitMQ requeues its unacked messages when the connection drops; Redis keeps them
# until the visibility timeout. Either way the heartbeat sweep sends its jobs again within seconds.)
worker_prefetch_multiplier = 1  # a busy worker does not hoard messages other workers could run
task_soft_time_limit = _settings.task_soft_time_limit
task_time_limit = _settings.task_time_limit

task_queues = _task_queues(_settings)
task_default_queue = TaskName.DR_GRADING.value
task_routes = {RUN_JOB_TASK: {"queue": TaskName.DR_GRADING.value}}  # the gateway names the queue per job
worker_hijack_root_logger = False
worker_send_task_events = False
