"""Jobs: their state, cancel and retry. Dead letters for admins."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter

from api.deps import (
    CurrentPrincipal,
    EditorPrincipal,
    OutboxDep,
    RequestIdDep,
    RuntimeDep,
    SessionDep,
    TenantAdminPrincipal,
)
from api.jobs import service
from api.jobs.schemas import DeadLetterRead, JobRead
from api.pagination import Page, pagination
from haven.db.repositories import DeadLetterRepository, JobRepository
from haven.db.tables import JobKind, JobState
from haven.dead_letters import drain_dead_letters
from haven.jobs import signal_cancel

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
    job = service.cancel(session, principal, job_id, rid)
    # A running job looks for this signal at every step boundary (the flag just set in
    # PostgreSQL is what counts; the signal only saves the worker a round trip).
    outbox.after_commit(lambda: signal_cancel(runtime.redis, job_id))
    return JobRead.model_validate(job)


@router.post("/jobs/{job_id}/retry", response_model=JobRead)
def retry_job(
    job_id: uuid.UUID,
    session: SessionDep,
    principal: EditorPrincipal,
    runtime: RuntimeDep,
    outbox: OutboxDep,
    rid: RequestIdDep,
) -> JobRead:
    job = service.retry(
        session, principal, job_id, rid, outbox, max_retries=runtime.settings.job_max_retries
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
    job = service.replay_dead_letter(session, principal, dead_letter_id, rid, outbox)
    return JobRead.model_validate(job)
