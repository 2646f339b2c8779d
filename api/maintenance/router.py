"""Maintenance for platform administrators: the tasks, their schedule and last runs, and
running one now (the same job the nightly schedule queues)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from api.deps import OutboxDep, PlatformAdminPrincipal, RequestIdDep, RuntimeDep, SessionDep
from api.maintenance.schemas import MaintenanceRunCreated, MaintenanceRunRead, MaintenanceTaskRead
from haven.db.repositories import AuditLog
from haven.db.tables import JobKind, JobState
from haven.errors import Conflict, NotFound
from haven.jobs import signal_cancel
from haven.maintenance import platform_jobs, read_catalog, request_run
from haven.queueing import task_for

router = APIRouter(prefix="/api/v1/admin/maintenance", tags=["maintenance"])


@router.get("", response_model=list[MaintenanceTaskRead])
def list_maintenance(session: SessionDep, _: PlatformAdminPrincipal) -> list[MaintenanceTaskRead]:
    """The tasks the maintenance workers run (as they published them at start), with the
    schedule their beat uses, and each task's last run and last successful run."""
    jobs = platform_jobs(session)
    listed = []
    for task in read_catalog(session).tasks.values():
        last = jobs.latest(task.name)
        success = jobs.latest(task.name, state=JobState.READY)
        listed.append(
            MaintenanceTaskRead(
                name=task.name,
                description=task.description,
                schedule=task.schedule,
                lock_seconds=task.lock_seconds,
                last_run=MaintenanceRunRead.model_validate(last) if last else None,
                last_success=MaintenanceRunRead.model_validate(success) if success else None,
            )
        )
    return listed


@router.post(
    "/{name}/run",
    response_model=MaintenanceRunCreated,
    status_code=status.HTTP_202_ACCEPTED,
)
def run_maintenance(
    name: str,
    session: SessionDep,
    outbox: OutboxDep,
    actor: PlatformAdminPrincipal,
    rid: RequestIdDep,
    response: Response,
) -> MaintenanceRunCreated:
    """Queue a run of the task now; while one is queued or running, that run is returned
    (200) instead of a second one."""
    catalog = read_catalog(session)
    if name not in catalog.tasks:
        raise NotFound("maintenance task")
    request = request_run(
        session,
        AuditLog(session, actor, rid),
        name,
        trigger="api",
        max_attempts=catalog.max_attempts,
    )
    if request.created:
        outbox.add(task_for(JobKind.MAINTENANCE.value), request.job.id)
    else:
        response.status_code = status.HTTP_200_OK
    return MaintenanceRunCreated(
        created=request.created, run=MaintenanceRunRead.model_validate(request.job)
    )


@router.post("/runs/{job_id}/cancel", response_model=MaintenanceRunRead)
def cancel_maintenance_run(
    job_id: uuid.UUID,
    session: SessionDep,
    runtime: RuntimeDep,
    outbox: OutboxDep,
    actor: PlatformAdminPrincipal,
    rid: RequestIdDep,
) -> MaintenanceRunRead:
    """Cancel a run: a queued one at once, a running one at its next progress report."""
    jobs = platform_jobs(session)
    if jobs.get(job_id) is None:
        raise NotFound("maintenance run")
    if not jobs.request_cancel(job_id):
        raise Conflict("the run has already ended", code="job.ended")
    job = jobs.get(job_id)
    assert job is not None
    session.refresh(job)
    AuditLog(session, actor, rid).record(
        "maintenance.cancel",
        target_type="maintenance",
        target_id=str(job.params.get("task")),
        tenant_id=None,
        job_id=str(job_id),
    )
    outbox.after_commit(lambda: signal_cancel(runtime.redis, job_id))
    return MaintenanceRunRead.model_validate(job)
