"""Jobs as tenants act on them: cancel, retry, and an admin's replay of a dead letter.

A manual retry grants the job one fresh budget of attempts (``job_max_attempts``) and is
audited with the attempts it had spent and the reason it had ended with. An editor may retry
a job ``job_max_retries`` times; past that a retry is refused (409 ``job.retry_limit``) and
only a tenant admin's dead-letter replay, audited the same way, sends it again.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from api.outbox import JobOutbox
from haven.auth.principal import Principal
from haven.db.repositories import AuditLog, DeadLetterRepository, JobRepository
from haven.db.tables import Job, JobState
from haven.errors import Conflict
from haven.queueing import task_for


def cancel(
    session: Session, principal: Principal, job_id: uuid.UUID, request_id: str | None
) -> Job:
    """A queued job is canceled at once; a running one stops at its next step boundary
    (the caller publishes the cancel signal once the transaction committed)."""
    jobs = JobRepository(session, principal)
    job = jobs.require(job_id)
    if not jobs.request_cancel(job):
        raise Conflict(f"the job is already {job.state}", code="job.ended")
    AuditLog(session, principal, request_id).record(
        "job.cancel",
        target_type="job",
        target_id=job.id,
        tenant_id=principal.tenant_id,
        state=job.state.value,
    )
    return job


def _requeue(jobs: JobRepository, job: Job) -> dict[str, object]:
    """failed | canceled → queued; what the audit row keeps of the job's past."""
    spent = {
        "attempts_spent": job.attempts,
        "max_attempts": job.max_attempts,
        "previous_state": job.state.value,
        "previous_error": job.last_error,
    }
    if not jobs.requeue(job):
        raise Conflict(
            f"only failed or canceled jobs can be retried (it is {job.state})", code="job.active"
        )
    return {**spent, "retry": job.retries}


def retry(
    session: Session,
    principal: Principal,
    job_id: uuid.UUID,
    request_id: str | None,
    outbox: JobOutbox,
    *,
    max_retries: int,
) -> Job:
    jobs = JobRepository(session, principal)
    job = jobs.require(job_id)
    if job.state in (JobState.FAILED, JobState.CANCELED) and job.retries >= max_retries:
        raise Conflict(
            f"the job was retried {job.retries} times already; "
            "a tenant admin can replay it from the dead letters",
            code="job.retry_limit",
        )
    details = _requeue(jobs, job)
    outbox.add(task_for(job.kind), job.id, force=True)
    AuditLog(session, principal, request_id).record(
        "job.retry", target_type="job", target_id=job.id, tenant_id=principal.tenant_id, **details
    )
    return job


def replay_dead_letter(
    session: Session,
    principal: Principal,
    dead_letter_id: uuid.UUID,
    request_id: str | None,
    outbox: JobOutbox,
) -> Job:
    letter = DeadLetterRepository(session, principal).require(dead_letter_id)
    if letter.job_id is None:
        raise Conflict("the job of this message no longer exists", code="job.gone")
    jobs = JobRepository(session, principal)
    job = jobs.require(letter.job_id)
    details = _requeue(jobs, job)
    letter.replayed_at = datetime.now(UTC)
    outbox.add(letter.task, job.id, force=True)
    AuditLog(session, principal, request_id).record(
        "dead_letter.replay",
        target_type="job",
        target_id=job.id,
        tenant_id=principal.tenant_id,
        dead_letter=str(letter.id),
        **details,
    )
    return job
