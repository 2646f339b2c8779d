"""Queueing a maintenance run from the workers' side (beat's ``maintenance.enqueue``)."""

from __future__ import annotations

from haven.db.engine import transaction
from haven.db.repositories import AuditLog
from haven.maintenance import Catalog, CatalogEntry, publish_catalog, request_run, send_run
from haven.maintenance_settings import MaintenanceSettings
from workers.maintenance.schedule import effective_schedule
from workers.maintenance.tasks import tasks
from workers.runtime import WorkerRuntime


def maintenance_schedule(settings: MaintenanceSettings) -> dict[str, str]:
    """Each task's cron expression (or ``off``), the settings' overrides applied."""
    return effective_schedule({t.name: t.cron for t in tasks().values()}, settings.schedule)


def enqueue_run(rt: WorkerRuntime, name: str, *, trigger: str) -> tuple[str, bool]:
    """Queue a run of ``name`` unless one is queued or running; its job id, and whether
    it is new."""
    with transaction(rt.session_factory) as session:
        request = request_run(
            session,
            AuditLog(session, None, None),
            name,
            trigger=trigger,
            max_attempts=rt.settings.maintenance.max_attempts,
        )
        job = request.job
    if request.created:
        send_run(rt.celery, rt.redis, job, expires_seconds=rt.settings.task_expires_seconds)
    return str(job.id), request.created


def publish(rt: WorkerRuntime) -> Catalog:
    """Publish the tasks this worker runs, with its beat schedule, for the admin API."""
    schedule = maintenance_schedule(rt.settings.maintenance)
    catalog = Catalog(
        {
            t.name: CatalogEntry(t.name, t.description, schedule[t.name], t.lock_seconds)
            for t in tasks().values()
        },
        rt.settings.maintenance.max_attempts,
    )
    with transaction(rt.session_factory) as session:
        publish_catalog(session, catalog)
    return catalog
