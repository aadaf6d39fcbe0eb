"""The broker's queues and transport options, declared alike by the gateway (publishing) and the workers.

One durable queue per task, named after it. On RabbitMQ they are classic queues, not quorum queues: RabbitMQ
before 4.0 (Debian bookworm ships 3.10) refuses message priorities on quorum queues, which the job lanes need
(x-max-priority, added to `queue_arguments` here), and a single-node broker gains nothing from quorum
replication. Both sides must declare a queue with the same arguments, or RabbitMQ refuses the second
declaration (PRECONDITION_FAILED): hence this one module.
"""

from __future__ import annotations

from kombu import Queue

from app.config import Settings
from app.schemas.tasks import TaskName


def queue_arguments(settings: Settings) -> dict[str, object]:
    """x-arguments every task queue is declared with (RabbitMQ reads them; Redis ignores them)."""
    return {}


def task_queues(settings: Settings) -> list[Queue]:
    arguments = queue_arguments(settings)
    return [Queue(task.value, routing_key=task.value, durable=True, queue_arguments=arguments or None)
            for task in TaskName]


def transport_options(settings: Settings) -> dict[str, object]:
    if settings.broker_is_redis:
        # Redis redelivers a message nobody acknowledged within this time; it must outlast the longest job.
        # A dead worker's jobs come back sooner, through the heartbeat sweep (app/dispatch/recovery.py).
        return {"visibility_timeout": settings.visibility_timeout}
    # RabbitMQ: wait for the broker's confirmation, so an accepted job's message is on the broker's disk.
    return {"confirm_publish": True}
