"""Job priority in queues: one ordering for the embedded lanes, and how each Celery broker is told about it.

The order is by rank, smaller first: the job's submission time, minus MEDIMG_PRIORITY_AGING_SECONDS for a
STAT job. A STAT job therefore goes ahead of routine jobs submitted less than that long before it, and a
routine job that has waited that long is no longer overtaken: aging, so routine work never starves.

Brokers order by a message priority instead, fixed when the message is sent. kombu's Redis transport keeps one
list per priority step and pops them lowest step first (0 is the most urgent, the reverse of AMQP); RabbitMQ
orders a queue declared with `x-max-priority` highest number first. In both, a routine job's aging is a
second message sent at STAT priority once it has waited long enough (`CeleryDispatcher.promote_aged`).
"""

from __future__ import annotations

from datetime import datetime

from kombu import Queue

from app.schemas.jobs import JobPriority

# kombu's default steps, stated so that the gateway's scan of the Redis lists (recover_lost) names the same keys.
REDIS_PRIORITY_STEPS = (0, 3, 6, 9)
REDIS_PRIORITY = {JobPriority.STAT: 0, JobPriority.ROUTINE: 9}
AMQP_MAX_PRIORITY = 9
AMQP_PRIORITY = {JobPriority.STAT: 9, JobPriority.ROUTINE: 0}


def queue_rank(priority: JobPriority, submitted_at: datetime, aging_seconds: float) -> float:
    return submitted_at.timestamp() - (aging_seconds if priority is JobPriority.STAT else 0.0)


def broker_is_redis(broker_url: str) -> bool:
    return broker_url.startswith(("redis://", "rediss://", "unix://"))


def broker_priority(priority: JobPriority, broker_url: str) -> int:
    return (REDIS_PRIORITY if broker_is_redis(broker_url) else AMQP_PRIORITY)[priority]


def celery_queues(names: list[str]) -> list[Queue]:
    """One queue per task, declared alike by the gateway and the workers (RabbitMQ refuses a redeclaration
    with other arguments). Redis ignores queue arguments. On RabbitMQ these are classic durable queues, not
    quorum queues: before RabbitMQ 4.0 (Debian bookworm ships 3.10) quorum queues refuse `x-max-priority`, and
    on one node they replicate nothing."""
    return [Queue(name, queue_arguments={"x-max-priority": AMQP_MAX_PRIORITY}) for name in names]


def redis_transport_options(visibility_timeout: int) -> dict:
    # round_robin (kombu's default) rotates the task queues a worker consumes, so tasks are served fairly;
    # the priority steps are polled before the queues, so STAT work of any of them still goes first.
    return {"visibility_timeout": visibility_timeout, "priority_steps": list(REDIS_PRIORITY_STEPS),
            "queue_order_strategy": "round_robin"}


def broker_transport_options(broker_url: str | None, visibility_timeout: int) -> dict:
    if broker_url is None or broker_is_redis(broker_url):  # None: not configured (yet), nothing is sent
        return redis_transport_options(visibility_timeout)
    # RabbitMQ: publishing waits for the broker's confirmation, so an accepted job's message is on its disk.
    return {"confirm_publish": True}
