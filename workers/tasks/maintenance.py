"""Periodic upkeep of the job queue (Celery beat)."""

from __future__ import annotations

from datetime import timedelta

import structlog

from haven.db.engine import transaction
from haven.jobs import JobStore
from haven.queueing import guard_key, send_job_once, task_for
from workers.runtime import WorkerRuntime

log = structlog.get_logger("haven.reaper")


def reap_jobs(rt: WorkerRuntime) -> dict[str, int]:
    """Requeue jobs whose worker died (no heartbeat for two leases) and fail those out of
    attempts; send again queued jobs whose message was lost (no in-flight guard)."""
    settings = rt.settings
    lease = timedelta(seconds=settings.job_lease_seconds)
    to_send: list[tuple[str, str, bool]] = []
    failed = 0
    with transaction(rt.session_factory) as session:
        store = JobStore(session)
        for job in store.stale_running(older_than=lease * 2):
            if job.attempts >= job.max_attempts:
                store.fail(
                    job.id, f"the worker stopped responding; gave up after {job.attempts} attempts"
                )
                failed += 1
            elif store.back_to_queue(job.id, "the worker stopped responding (no heartbeat)"):
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
    if to_send or failed:
        log.info("reaper.run", sent=len(to_send), failed=failed)
    return {"sent": len(to_send), "failed": failed}
