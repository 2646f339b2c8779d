"""The workers' Celery application: the shared queue topology plus Haven's tasks.

``create_worker_app(settings)`` builds it; ``workers.main`` is the entry point Celery's CLI
loads (``celery -A workers.main worker``).
"""

from __future__ import annotations

import random
import uuid
from typing import Any

import structlog
from celery import Celery, Task
from celery.exceptions import Reject
from celery.signals import worker_init

from haven.db.engine import transaction
from haven.db.tables import DocumentState
from haven.dead_letters import drain_dead_letters
from haven.emb_client import EmbeddingRejected
from haven.jobs import TERMINAL, JobStore
from haven.queueing import (
    DRAIN_DEAD_TASK,
    INGEST_TASK,
    REAP_TASK,
    clear_guard,
    create_celery,
    declare_topology,
)
from workers.heartbeat import Heartbeat, JobCanceled, JobLost
from workers.ingest.extract import ExtractionError
from workers.runtime import WorkerRuntime, runtime_for
from workers.settings import WorkerSettings
from workers.tasks import maintenance
from workers.tasks.ingest import IngestRun, begin, mark_version

log = structlog.get_logger("haven.worker")


class JobTask(Task):  # type: ignore[misc]
    """Restores the request id of the API call that created the job into every log line."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        structlog.contextvars.clear_contextvars()
        request_id = (self.request.headers or {}).get("request_id") if self.request else None
        structlog.contextvars.bind_contextvars(
            task=self.name, job_id=str(args[0]) if args else None, request_id=request_id
        )
        return super().__call__(*args, **kwargs)


def backoff(settings: WorkerSettings, attempts: int) -> float:
    """Exponential backoff with full jitter."""
    ceiling = min(
        settings.retry_backoff_max_seconds,
        settings.retry_backoff_seconds * 2 ** max(attempts - 1, 0),
    )
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not security


def run_ingest(task: Task, rt: WorkerRuntime, job_id: uuid.UUID) -> str:
    settings = rt.settings
    lock = rt.redis.lock(
        f"haven:lock:job:{job_id}", timeout=settings.job_lease_seconds, blocking=False
    )
    if not lock.acquire():
        # Another worker holds the job, or one that died still holds the lock until its
        # lease ends: look again once it would have expired.
        raise task.retry(countdown=settings.job_lease_seconds, max_retries=None)
    ready = False  # a job known to have ended ready need not be read back
    try:
        claim = begin(rt, job_id)
        if claim is None:
            return "skipped"  # ended, canceled while queued, or unknown
        subject = claim.subject
        if subject is None:
            with transaction(rt.session_factory) as session:
                JobStore(session).fail(job_id, "the document was deleted")
            return "failed"
        heartbeat = Heartbeat(
            job_id,
            lock=lock,
            cancels=rt.cancels,
            session_factory=rt.session_factory,
            interval_seconds=settings.job_heartbeat_seconds,
            lease_seconds=settings.job_lease_seconds,
        )
        run = IngestRun(rt, subject, heartbeat)
        try:
            run.run()
        except JobLost:
            return "lost"  # the reaper gave the job to another run
        except JobCanceled:
            run.discard()
            with transaction(rt.session_factory) as session:
                JobStore(session).mark_canceled(job_id)
            mark_version(rt, subject, DocumentState.CANCELED)
            return "canceled"
        except (ExtractionError, EmbeddingRejected) as exc:
            # The document itself is the problem: retrying cannot help.
            run.discard()
            with transaction(rt.session_factory) as session:
                JobStore(session).fail(job_id, str(exc))
            mark_version(rt, subject, DocumentState.FAILED)
            return "failed"
        except Exception as exc:
            return _retry_or_dead_letter(
                task, rt, job_id, claim.attempts, claim.max_attempts, exc, subject=subject, run=run
            )
        ready = True
        return "ready"
    finally:
        if ready or _ended(rt, job_id):
            clear_guard(rt.redis, str(job_id))
        try:
            lock.release()
        except Exception:  # the lease expired meanwhile; nothing to release
            log.warning("job.lock_lost", job_id=str(job_id))


def _ended(rt: WorkerRuntime, job_id: uuid.UUID) -> bool:
    with transaction(rt.session_factory) as session:
        job = JobStore(session).get(job_id)
        return job is None or job.state in TERMINAL


def _retry_or_dead_letter(
    task: Task,
    rt: WorkerRuntime,
    job_id: uuid.UUID,
    attempts: int,
    max_attempts: int,
    exc: Exception,
    *,
    subject: Any,
    run: IngestRun,
) -> str:
    reason = f"{type(exc).__name__}: {exc}"[:2000]
    if attempts >= max_attempts:
        log.error("job.dead_lettered", attempts=attempts, error=reason)
        with transaction(rt.session_factory) as session:
            JobStore(session).fail(job_id, f"gave up after {attempts} attempts: {reason}")
        run.discard()
        mark_version(rt, subject, DocumentState.FAILED)
        # Rejected without requeue: RabbitMQ moves the message to the dead-letter queue.
        raise Reject(reason, requeue=False) from exc
    with transaction(rt.session_factory) as session:
        JobStore(session).back_to_queue(job_id, reason)
    delay = backoff(rt.settings, attempts)
    log.warning("job.retry", attempts=attempts, delay_s=round(delay, 1), error=reason)
    raise task.retry(countdown=delay, max_retries=None, exc=exc)


def create_worker_app(settings: WorkerSettings) -> Celery:
    app = create_celery(settings, beat_interval=settings.reaper_interval_seconds)
    app.conf.haven_settings = settings
    # Threads, not forked processes: jobs wait on emb, PostgreSQL and the object store, and
    # each thread shares the process's connections and chunking tokenizer.
    app.conf.worker_pool = "threads"
    app.conf.worker_concurrency = settings.worker_concurrency
    settings.beat_schedule_path.parent.mkdir(parents=True, exist_ok=True)
    app.conf.beat_schedule_filename = str(settings.beat_schedule_path)

    @app.task(bind=True, base=JobTask, name=INGEST_TASK, acks_late=True)
    def ingest_document(self: Task, job_id: str) -> str:
        return run_ingest(self, runtime_for(app), uuid.UUID(job_id))

    @app.task(name=REAP_TASK, acks_late=True)
    def reap_jobs() -> dict[str, int]:
        return maintenance.reap_jobs(runtime_for(app))

    @app.task(name=DRAIN_DEAD_TASK, acks_late=True)
    def drain_dead() -> int:
        return drain_dead_letters(app, runtime_for(app).session_factory)

    @worker_init.connect(weak=False)
    def _prepare(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return
        declare_topology(app)
        try:  # load the chunking tokenizer now rather than inside the first job
            runtime_for(app).warm()
        except Exception as exc:  # jobs will retry until the model store is reachable
            log.warning("worker.warm_failed", error=str(exc))

    del ingest_document, reap_jobs, drain_dead
    return app
