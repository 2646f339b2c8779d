"""Jobs: their state, cancel and retry. Dead letters for admins."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, status

from api.deps import (
    CurrentPrincipal,
    EditorPrincipal,
    OutboxDep,
    RequestIdDep,
    RuntimeDep,
    SessionDep,
    TenantAdminPrincipal,
)
from api.jobs.schemas import DeadLetterRead, JobRead
from api.pagination import Page, pagination
from haven.db.repositories import AuditLog, DeadLetterRepository, JobRepository
from haven.db.tables import JobKind, JobState
from haven.dead_letters import drain_dead_letters
from haven.jobs import signal_cancel
from haven.queueing import task_for

router = APIRouter(prefix="/api/v1", tags=["jobs"])


@router.get("/jobs", response_model=list[JobRead])
def list_jobs(
    session: SessionDep,
    principal: CurrentPrincipal,
    page: Annotated[Page, pagination(default_limit=50, max_limit=500)],
    state: JobState | None = None,
    kind: JobKind | None = None,
) -> list[JobRead]:
    rows = JobRepository(session, principal).list_filtered(
        state=state, kind=kind, offset=page.offset, limit=page.limit
    )
    return [JobRead.model_validate(j) for j in rows]


@router.get("/jobs/{job_id}", response_model=JobRead)
def get_job(job_id: uuid.UUID, session: SessionDep, principal: CurrentPrincipal) -> JobRead:
    return JobRead.model_validate(JobRepository(session, principal).require(job_id))


@router.post("/jobs/{job_id}/cancel", response_model=JobRead)
def cancel_job(
    job_id: uuid.UUID,
    session: SessionDep,
    principal: EditorPrincipal,
    runtime: RuntimeDep,
    outbox: OutboxDep,
    rid: RequestIdDep,
) -> JobRead:
    jobs = JobRepository(session, principal)
    job = jobs.require(job_id)
    if not jobs.request_cancel(job):
        raise HTTPException(status.HTTP_409_CONFLICT, f"job is already {job.state}")
    # A running job looks for this signal at every step boundary (the flag just set in
    # PostgreSQL is what counts; the signal only saves the worker a round trip).
    outbox.after_commit(lambda: signal_cancel(runtime.redis, job_id))
    AuditLog(session, principal, rid).record(
        "job.cancel",
        target_type="job",
        target_id=job.id,
        tenant_id=principal.tenant_id,
        state=job.state.value,
    )
    return JobRead.model_validate(job)


@router.post("/jobs/{job_id}/retry", response_model=JobRead)
def retry_job(
    job_id: uuid.UUID,
    session: SessionDep,
    principal: EditorPrincipal,
    outbox: OutboxDep,
    rid: RequestIdDep,
) -> JobRead:
    jobs = JobRepository(session, principal)
    job = jobs.require(job_id)
    if not jobs.requeue(job):
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"only failed or canceled jobs can be retried (it is {job.state})",
        )
    outbox.add(task_for(job.kind), job.id, force=True)
    AuditLog(session, principal, rid).record(
        "job.retry", target_type="job", target_id=job.id, tenant_id=principal.tenant_id
    )
    return JobRead.model_validate(job)


@router.get("/admin/dead-letters", response_model=list[DeadLetterRead])
def list_dead_letters(
    session: SessionDep,
    principal: TenantAdminPrincipal,
    runtime: RuntimeDep,
    page: Annotated[Page, pagination(default_limit=100, max_limit=500)],
) -> list[DeadLetterRead]:
    # Move whatever RabbitMQ dead-lettered since the last maintenance run into PostgreSQL.
    drain_dead_letters(runtime.celery, runtime.session_factory)
    rows = DeadLetterRepository(session, principal).list(offset=page.offset, limit=page.limit)
    return [DeadLetterRead.model_validate(d) for d in rows]


@router.post("/admin/dead-letters/{dead_letter_id}/replay", response_model=JobRead)
def replay_dead_letter(
    dead_letter_id: uuid.UUID,
    session: SessionDep,
    principal: TenantAdminPrincipal,
    outbox: OutboxDep,
    rid: RequestIdDep,
) -> JobRead:
    letter = DeadLetterRepository(session, principal).require(dead_letter_id)
    if letter.job_id is None:
        raise HTTPException(status.HTTP_409_CONFLICT, "the job of this message no longer exists")
    jobs = JobRepository(session, principal)
    job = jobs.require(letter.job_id)
    if job.state not in (JobState.FAILED, JobState.CANCELED) or not jobs.requeue(job):
        raise HTTPException(status.HTTP_409_CONFLICT, f"the job is {job.state}, not failed")
    letter.replayed_at = datetime.now(UTC)
    outbox.add(letter.task, job.id, force=True)
    AuditLog(session, principal, rid).record(
        "dead_letter.replay",
        target_type="job",
        target_id=job.id,
        tenant_id=principal.tenant_id,
        dead_letter=str(letter.id),
    )
    return JobRead.model_validate(job)
