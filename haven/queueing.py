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

QUEUES = ("ingest", "analyze", "review", "maintenance")
TASK_EXCHANGE = Exchange("haven", type="direct", durable=True)
DEAD_EXCHANGE = Exchange("haven.dlx", type="direct", durable=True)
DEAD_QUEUE_NAME = "haven.dead"

INGEST_TASK = "ingest.document"
REAP_TASK = "maintenance.reap_jobs"
DRAIN_DEAD_TASK = "maintenance.drain_dead_letters"


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
        task_routes={
            "ingest.*": {"queue": "ingest", "routing_key": "ingest"},
            "analyze.*": {"queue": "analyze", "routing_key": "analyze"},
            "review.*": {"queue": "review", "routing_key": "review"},
            "maintenance.*": {"queue": "maintenance", "routing_key": "maintenance"},
        },
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
    tasks = {"ingest": INGEST_TASK}
    if kind not in tasks:
        raise ValueError(f"no task runs {kind} jobs yet")
    return tasks[kind]
