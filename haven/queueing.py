"""Haven's task queues, shared by the producers (API) and the consumers (workers).

RabbitMQ is the broker with a dead-letter exchange; Redis keeps results and guards. Every queue
dead-letters into ``haven.dlx``; a message rejected without requeue after its retries lands in
``haven.dead``, from where maintenance moves it into PostgreSQL (``dead_letters``) so admins
can list and replay it. Tasks are acked late and rejected back to the broker if the worker
dies, one message at a time per worker (prefetch 1), JSON only, ids only, always with an
expiry. A Redis ``SET NX EX`` guard marks a job whose message is in flight, so the reaper
re-sends only jobs whose message was really lost.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import redis
from celery import Celery
from kombu.entity import Exchange, Queue, binding

from haven.settings import StoreSettings

# One queue per workload, so a slow review never delays an upload; a worker consumes the
# queues it is configured for (``HAVEN_WORKER_QUEUES``), every one by default.
QUEUES = ("ingest", "analyze", "review", "run", "maintenance")
TASK_EXCHANGE = Exchange("haven", type="direct", durable=True)
DEAD_EXCHANGE = Exchange("haven.dlx", type="direct", durable=True)
DEAD_QUEUE_NAME = "haven.dead"

INGEST_TASK = "ingest.document"
REAP_TASK = "maintenance.reap_jobs"
DRAIN_DEAD_TASK = "maintenance.drain_dead_letters"

# The Celery task that runs each job kind. A task's name starts with its queue (routing is
# by that prefix), so the message, the worker's log and a dead letter all say which
# pipeline it is. The workers register a task only for the kinds they have a handler for
# (``workers.jobs.registry``).
JOB_TASKS: dict[str, str] = {
    "ingest": INGEST_TASK,
    "analyze": "analyze.run",
    "review": "review.run",
    "run": "run.execute",
    "maintenance": "maintenance.run",
    "probe": "maintenance.probe",
}


def task_queues() -> list[Queue]:
    return [
        Queue(
            name,
            TASK_EXCHANGE,
            routing_key=name,
            durable=True,
            queue_arguments={
                "x-dead-letter-exchange": DEAD_EXCHANGE.name,
                "x-dead-letter-routing-key": name,
            },
        )
        for name in QUEUES
    ]


def dead_queue() -> Queue:
    return Queue(
        DEAD_QUEUE_NAME,
        bindings=[binding(DEAD_EXCHANGE, routing_key=name) for name in QUEUES],
        durable=True,
    )


def create_celery(settings: StoreSettings, *, beat_interval: float = 30.0) -> Celery:
    app = Celery("haven", set_as_current=False)
    app.conf.update(
        broker_url=settings.broker_url.get_secret_value(),
        result_backend=settings.redis_url,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=task_queues(),
        task_default_queue="ingest",
        task_default_exchange=TASK_EXCHANGE.name,
        task_default_routing_key="ingest",
        task_routes={f"{name}.*": {"queue": name, "routing_key": name} for name in QUEUES},
        task_ignore_result=True,  # PostgreSQL holds every job's state
        task_track_started=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"confirm_publish": True},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        beat_schedule={
            "reap-jobs": {"task": REAP_TASK, "schedule": timedelta(seconds=beat_interval)},
            "drain-dead-letters": {
                "task": DRAIN_DEAD_TASK,
                "schedule": timedelta(seconds=beat_interval),
            },
        },
    )
    return app


def declare_topology(app: Celery) -> None:
    """Declare the exchanges and queues, the dead-letter queue included, before any message
    could be dead-lettered (RabbitMQ drops dead letters that have nowhere to go)."""
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for queue in [*task_queues(), dead_queue()]:
            queue.bind(channel).declare()


QUEUED_GUARD = "haven:queued:{job_id}"


def guard_key(job_id: str) -> str:
    return QUEUED_GUARD.format(job_id=job_id)


def send_job_once(
    app: Celery,
    client: redis.Redis,
    task: str,
    job_id: str,
    *,
    expires_seconds: int,
    headers: dict[str, Any] | None = None,
    countdown: float | None = None,
    force: bool = False,
) -> bool:
    """Send unless a message for this job is already in flight (or ``force``)."""
    fresh = client.set(guard_key(job_id), "1", nx=True, ex=expires_seconds)
    if not fresh and not force:
        return False
    if force:
        client.set(guard_key(job_id), "1", ex=expires_seconds)
    try:
        app.send_task(
            task,
            args=[job_id],
            expires=expires_seconds,
            headers={k: v for k, v in (headers or {}).items() if v is not None},
            countdown=countdown,
        )
    except Exception:
        client.delete(guard_key(job_id))
        raise
    return True


def clear_guard(client: redis.Redis, job_id: str) -> None:
    client.delete(guard_key(job_id))


def task_for(kind: str) -> str:
    """The task that runs a job of this kind."""
    if kind not in JOB_TASKS:
        raise ValueError(f"no task runs {kind} jobs")
    return JOB_TASKS[kind]


def queue_of(task: str) -> str:
    """The queue a task is routed to (its name's first part)."""
    return task.split(".", 1)[0]
