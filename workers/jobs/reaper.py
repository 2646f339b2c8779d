"""The reaper (Celery beat, every ``reaper_interval_seconds``): jobs whose message or worker
was lost are sent again.

A running job's lease is renewed by its worker's keeper thread however long its step, so a
job whose heartbeat is two leases old really has no live worker: it goes back to the queue
with ``worker.lost`` and is sent again, and its next claim counts the attempt (or, with
none left, fails it and dead-letters its message). A queued job whose message guard
expired (the message was lost) is sent again as it is.
"""

from __future__ import annotations

from datetime import timedelta

import structlog

from haven.db.engine import transaction
from haven.jobs import WORKER_LOST, JobStore
from haven.queueing import guard_key, send_job_once, task_for
from workers.review.publish import deliver_due
from workers.runtime import WorkerRuntime

log = structlog.get_logger("haven.reaper")


def reap_jobs(rt: WorkerRuntime) -> dict[str, int]:
    settings = rt.settings
    lease = timedelta(seconds=settings.job_lease_seconds)
    to_send: list[tuple[str, str, bool]] = []
    with transaction(rt.session_factory) as session:
        store = JobStore(session)
        for job in store.stale_running(older_than=lease * 2):
            if store.back_to_queue(
                job.id, WORKER_LOST, "its worker stopped renewing the job's lease"
            ):
                to_send.append((task_for(job.kind), str(job.id), True))
        for job in store.stale_queued(
            older_than=timedelta(seconds=settings.reaper_interval_seconds)
        ):
            if not rt.redis.exists(guard_key(str(job.id))):
                store.touch(job.id)
                to_send.append((task_for(job.kind), str(job.id), False))
    for task, job_id, force in to_send:
        send_job_once(
            rt.celery,
            rt.redis,
            task,
            job_id,
            expires_seconds=settings.task_expires_seconds,
            force=force,
        )
    if to_send:
        log.info("reaper.run", sent=len(to_send))
    # Review results whose delivery is due (the outbox of workers.review.publish).
    published = deliver_due(rt.session_factory, settings.review)
    return {"sent": len(to_send), **published}
