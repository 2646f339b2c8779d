"""The job runner: one delivery of a job's message, whatever its kind.

lock → claim (one more attempt, refused past the cap) → the handler's steps under a lease the
process's keeper renews → finish in the results' transaction; or cancel, retry with backoff,
fail, dead-letter. Every end writes a reason code (``haven.jobs.Reason``) on the job and the
whole exception to the log, with the job id and the request id.

Attempts are counted at the claim, so a message redelivered after its worker died (Celery
acks late and RabbitMQ requeues the message of a lost connection) spends one: a job that
kills its worker every time is refused once its attempts are spent, ends ``failed`` with
``worker.lost`` and its message goes to the dead-letter queue.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable

import structlog
from celery import Task
from celery.exceptions import Reject
from minio.error import S3Error
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from haven.db.engine import transaction
from haven.db.repositories import JobStore
from haven.db.tables import JobState
from haven.jobs import INTERNAL, STEP_TIMEOUT, SUBJECT_GONE, TERMINAL, WORKER_LOST, Reason
from haven.ops_metrics import WORKER_METRICS
from haven.queueing import clear_guard, send_job_once, task_for
from workers.jobs.handler import Claim, JobHandler
from workers.jobs.heartbeat import Heartbeat, JobCanceled, JobDeferred, JobLost
from workers.runtime import WorkerRuntime
from workers.settings import WorkerSettings

log = structlog.get_logger("haven.worker")


def backoff(settings: WorkerSettings, attempts: int) -> float:
    """Exponential backoff with full jitter."""
    ceiling = min(
        settings.retry_backoff_max_seconds,
        settings.retry_backoff_seconds * 2 ** max(attempts - 1, 0),
    )
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not security


def lock_key(job_id: uuid.UUID) -> str:
    return f"haven:lock:job:{job_id}"


def run_job(task: Task, rt: WorkerRuntime, handler: JobHandler, job_id: uuid.UUID) -> str:
    """Run one delivery of the job; returns how it ended (for the log)."""
    settings = rt.settings
    if rt.read_only.current().on:
        # Read-only mode: running jobs finish, no new one starts. The job stays queued and
        # its message comes back after the Retry-After of refused writes.
        log.info("job.deferred_read_only")
        raise task.retry(countdown=settings.read_only_retry_after_seconds, max_retries=None)
    # Not thread-local: the keeper thread renews the lock this thread took.
    lock = rt.redis.lock(
        lock_key(job_id), timeout=settings.job_lease_seconds, blocking=False, thread_local=False
    )
    if not lock.acquire():
        # Another worker holds the job, or one that died still holds the lock until its
        # lease ends: look again once it would have expired.
        raise task.retry(countdown=settings.job_lease_seconds, max_retries=None)
    ready = False  # a job known to have ended ready need not be read back
    beat: Heartbeat | None = None
    try:
        # A cancel heard for an earlier, canceled run no longer applies; one published from
        # now on does (the claim refuses a job whose cancel was already requested).
        rt.cancels.forget(job_id)
        claim = handler.begin(rt, job_id)
        if claim is None:
            return _unclaimed(rt, handler, job_id)
        # Every later line of the run names its tenant and, for a document's job, the document.
        document_id = claim.params.get("document_id") or getattr(claim.subject, "document_id", None)
        structlog.contextvars.bind_contextvars(
            tenant_id=str(claim.tenant_id), doc_id=str(document_id) if document_id else None
        )
        if claim.gone:
            with transaction(rt.session_factory) as session:
                JobStore(session).fail(
                    job_id,
                    SUBJECT_GONE,
                    f"the {handler.subject_label} was deleted",
                    attempt=claim.attempt,
                )
            return "failed"
        beat = Heartbeat(
            job_id,
            claim.attempt,
            lock=lock,
            cancels=rt.cancels,
            session_factory=rt.session_factory,
            interval_seconds=settings.job_heartbeat_seconds,
            lease_seconds=settings.job_lease_seconds,
            step_deadline_seconds=settings.job_step_deadline_seconds,
        )
        rt.keeper.watch(beat, lambda overdue: _take_from_overdue_step(rt, handler, overdue))
        try:
            handler.run(rt, claim, beat)
        except JobLost:
            # Another attempt holds the job (or it ended): what this run did is not its.
            log.warning("job.lost", attempt=claim.attempt)
            return "lost"
        except JobDeferred as deferred:
            rt.keeper.forget(beat)  # no lease renewal for an attempt about to be given back
            return _deferred(task, rt, claim, deferred)
        except JobCanceled:
            _quietly(handler.discard, rt, claim)
            with transaction(rt.session_factory) as session:
                moved = JobStore(session).mark_canceled(job_id, attempt=claim.attempt)
            if moved:
                handler.ended(rt, claim, JobState.CANCELED)
            return "canceled"
        except Exception as exc:
            return _failed(task, rt, handler, claim, exc)
        finally:
            rt.keeper.forget(beat)
        ready = True
        return "ready"
    finally:
        if ready or _ended(rt, job_id):
            clear_guard(rt.redis, str(job_id))
        if beat is None or not beat.expired:  # an expired run's lock is the next attempt's
            try:
                lock.release()
            except Exception:  # the lease expired meanwhile; nothing to release
                log.warning("job.lock_lost", job_id=str(job_id))


def reason_for(handler: JobHandler, exc: Exception) -> Reason:
    """The job's reason for ``exc``: the pipeline's own, else the dependency that failed,
    else ``internal``. Transient unless the handler says otherwise."""
    found = handler.reason(exc)
    if found is not None:
        return found
    if isinstance(exc, SQLAlchemyError):
        return Reason("database.unavailable", "the database could not be reached")
    if isinstance(exc, RedisError):
        return Reason("redis.unavailable", "Redis could not be reached")
    if isinstance(exc, S3Error):
        return Reason("storage.unavailable", "the object store refused or failed a request")
    return Reason(INTERNAL, "an unexpected error in the worker; its log has the details")


def _failed(
    task: Task, rt: WorkerRuntime, handler: JobHandler, claim: Claim, exc: Exception
) -> str:
    reason = reason_for(handler, exc)
    WORKER_METRICS.step_failed(handler.kind.value, reason.code)
    # The whole exception for operators (the job and request ids are bound to the log).
    log.error(
        "job.step_failed",
        code=reason.code,
        attempt=claim.attempt,
        permanent=reason.permanent,
        exc_info=exc,
    )
    store_message = reason.message
    last = reason.permanent or claim.attempt >= claim.max_attempts
    if not last:
        with transaction(rt.session_factory) as session:
            moved = JobStore(session).back_to_queue(
                claim.job_id, reason.code, store_message, attempt=claim.attempt
            )
        if not moved:
            return "lost"
        delay = backoff(rt.settings, claim.attempt)
        log.warning("job.retry", attempt=claim.attempt, delay_s=round(delay, 1), code=reason.code)
        raise task.retry(countdown=delay, max_retries=None, exc=exc)
    if not reason.permanent:
        store_message = f"gave up after {claim.attempt} attempts: {reason.message}"
    _quietly(handler.discard, rt, claim)
    with transaction(rt.session_factory) as session:
        moved = JobStore(session).fail(
            claim.job_id, reason.code, store_message, attempt=claim.attempt
        )
    if not moved:
        return "lost"
    handler.ended(rt, claim, JobState.FAILED)
    if reason.permanent:
        return "failed"  # the document itself is the problem: nothing to replay
    log.error("job.dead_lettered", attempts=claim.attempt, code=reason.code)
    # Rejected without requeue: RabbitMQ moves the message to the dead-letter queue.
    raise Reject(reason.code, requeue=False) from exc


def _deferred(task: Task, rt: WorkerRuntime, claim: Claim, deferred: JobDeferred) -> str:
    """The run gave its job back unstarted: queued again with the attempt given back, and
    sent again later (backoff on the message's deliveries, any worker may take it)."""
    with transaction(rt.session_factory) as session:
        moved = JobStore(session).unclaim(claim.job_id, attempt=claim.attempt)
    if not moved:
        return "lost"
    settings = rt.settings
    deliveries = int(getattr(task.request, "retries", 0) or 0)
    ceiling = min(
        settings.job_defer_max_seconds, settings.job_defer_seconds * 2 ** min(deliveries, 16)
    )
    delay = random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not security
    log.info("job.deferred", why=deferred.why, delay_s=round(delay, 1))
    raise task.retry(countdown=delay, max_retries=None)


def _unclaimed(rt: WorkerRuntime, handler: JobHandler, job_id: uuid.UUID) -> str:
    """The claim refused the job: it ended, was canceled, is unknown, or has no attempt
    left. The last: the attempt before this delivery never finished (its worker died, or
    its step ran past its deadline), so the job fails and its message is dead-lettered."""
    with transaction(rt.session_factory) as session:
        store = JobStore(session)
        job = store.over_cap(job_id)
        if job is None:
            return "skipped"
        if job.state == JobState.QUEUED and job.last_error:
            code, message = job.last_error, job.last_error_message or job.last_error
        else:  # still running: the worker of its last attempt died mid-run
            code, message = WORKER_LOST, "its worker stopped while running it (killed or crashed)"
        store.fail(job_id, code, f"gave up after {job.attempts} attempts: {message}")
        claim = Claim.of(job)
    _quietly(handler.discard, rt, claim)
    handler.ended(rt, claim, JobState.FAILED)
    log.error("job.dead_lettered", attempts=claim.attempt, code=code)
    raise Reject(code, requeue=False)


def _take_from_overdue_step(rt: WorkerRuntime, handler: JobHandler, beat: Heartbeat) -> None:
    """The keeper's answer to a step past its deadline. A step running in a thread cannot be
    killed: the job is taken from its run (requeued with ``step.timeout``, and sent again so
    another attempt, or the attempts cap, decides), and whatever the late step returns is
    discarded, because its attempt no longer holds the job."""
    message = f"step {beat.step} ran past its deadline of {beat.step_deadline:g} s"
    with transaction(rt.session_factory) as session:
        moved = JobStore(session).back_to_queue(
            beat.job_id, STEP_TIMEOUT, message, attempt=beat.attempt
        )
    beat.expire()
    log.error("job.step_timeout", job_id=str(beat.job_id), attempt=beat.attempt, step=beat.step)
    if moved:
        send_job_once(
            rt.celery,
            rt.redis,
            task_for(handler.kind.value),
            str(beat.job_id),
            expires_seconds=rt.settings.task_expires_seconds,
            countdown=backoff(rt.settings, beat.attempt),
            force=True,
        )


def _ended(rt: WorkerRuntime, job_id: uuid.UUID) -> bool:
    with transaction(rt.session_factory) as session:
        job = JobStore(session).get(job_id)
        return job is None or job.state in TERMINAL


def _quietly(
    cleanup: Callable[[WorkerRuntime, Claim], None], rt: WorkerRuntime, claim: Claim
) -> None:
    """A clean-up that fails (the index is away) must not keep the job from ending: what it
    left is inactive, and a later run of the job replaces it."""
    try:
        cleanup(rt, claim)
    except Exception:
        log.exception("job.discard_failed", job_id=str(claim.job_id))
