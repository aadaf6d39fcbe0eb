"""Celery settings that lose no work: late acks, requeue when a worker dies, one message in hand at a time."""

from kombu import Queue

from app.config import get_settings
from app.dispatch.priority import broker_transport_options as _transport_options, celery_queues
from app.schemas.tasks import EXPORT_QUEUE, RUN_JOB_TASK, TaskName

_settings = get_settings()

broker_url = _settings.celery_broker_url
broker_connection_retry_on_startup = True
# Redis redelivers a message nobody acknowledged within this time; it must outlast the longest job. Priority
# steps and queue order: app/dispatch/priority.py. RabbitMQ: publisher confirms.
broker_transport_options = _transport_options(broker_url, _settings.visibility_timeout)

task_serializer = "json"
accept_content = ["json"]
task_ignore_result = True  # outcomes live in the job store, not in a Celery result backend

task_acks_late = True  # acknowledge after the job ran, so a crash mid-job means redelivery
task_reject_on_worker_lost = True  # a killed child process requeues its message instead of acking it
# (A whole worker killed: RabbitMQ requeues its unacked messages when the connection drops; Redis keeps them
# until the visibility timeout. Either way the heartbeat sweep sends its jobs again within seconds.)
# A busy worker does not hoard messages other workers could run; and with late acks a process holds only the
# message it runs, so the next one it takes is the most urgent at that moment (priorities apply at the fetch).
worker_prefetch_multiplier = 1
task_soft_time_limit = _settings.task_soft_time_limit
task_time_limit = _settings.task_time_limit

# One queue per registered task (app/plugins), and the exports' queue; the gateway names each job's queue.
task_queues = celery_queues([task.value for task in TaskName]) + [Queue(EXPORT_QUEUE)]  # exports: app/export/outbox.py
task_default_queue = next(iter(TaskName)).value
task_routes = {RUN_JOB_TASK: {"queue": task_default_queue}}
worker_hijack_root_logger = False
worker_send_task_events = False
