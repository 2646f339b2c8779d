"""Maintenance for platform administrators: the tasks, their schedule and last runs, and
running one now (the same job the nightly schedule queues)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from api.deps import OutboxDep, PlatformAdminPrincipal, RequestIdDep, SessionDep
from api.maintenance.schemas import MaintenanceRunCreated, MaintenanceRunRead, MaintenanceTaskRead
from haven.db.repositories import AuditLog
from haven.db.tables import JobKind, JobState
from haven.errors import NotFound
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
