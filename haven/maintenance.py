"""Maintenance runs as the API, the CLI and the beat schedule request them.

Maintenance is platform-wide, while every job belongs to a tenant (``jobs.tenant_id`` is
required and cascades with its tenant). Its jobs therefore belong to the platform's own
tenant: a fixed, inactive tenant created by the ``0005_maintenance`` migration (and again
here if a database lacks it), which has no users, so no tenant's job list shows them and
only platform administrators reach them (``/api/v1/admin/maintenance``).

One run of a task at a time: a request while a run of the task is queued or running returns
that run (``created`` False) instead of adding another; the requests of one task are
serialised by a transaction-scoped advisory lock. The worker's task lock
(``workers.maintenance.handler``) covers the rest (a run started from the CLI in-process).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from sqlalchemy.orm import Session

from haven.db.repositories import AuditLog, MaintenanceJobs
from haven.db.tables import (
    PLATFORM_TENANT_ID,
    PLATFORM_TENANT_NAME,
    PLATFORM_TENANT_SLUG,
    Job,
    JobKind,
)
from haven.queueing import send_job_once, task_for

__all__ = ["PLATFORM_TENANT_ID", "PLATFORM_TENANT_NAME", "PLATFORM_TENANT_SLUG"]


def platform_jobs(session: Session) -> MaintenanceJobs:
    return MaintenanceJobs(session, PLATFORM_TENANT_ID)


@dataclass(frozen=True)
class RunRequest:
    job: Job
    created: bool  # False: a run of the task was already queued or running


def request_run(
    session: Session,
    audit: AuditLog,
    task: str,
    *,
    trigger: str,
    max_attempts: int,
    params: dict[str, Any] | None = None,
) -> RunRequest:
    """Queue a run of ``task`` (a known task name: the caller checks), or return the run
    already queued or running. The caller commits, then sends the job (``maintenance.run``)."""
    jobs = platform_jobs(session)
    jobs.ensure_tenant(PLATFORM_TENANT_SLUG, PLATFORM_TENANT_NAME)
    jobs.lock_task(task)
    running = jobs.unfinished(task)
    if running is not None:
        return RunRequest(running, created=False)
    job = jobs.add(task, params={**(params or {}), "trigger": trigger}, max_attempts=max_attempts)
    audit.record(
        "maintenance.run",
        target_type="maintenance",
        target_id=task,
        tenant_id=None,
        job_id=str(job.id),
        trigger=trigger,
    )
    return RunRequest(job, created=True)


def send_run(app: Celery, client: redis.Redis, job: Job, *, expires_seconds: int) -> None:
    """Send a queued run to the ``maintenance`` queue (after its transaction committed)."""
    send_job_once(
        app,
        client,
        task_for(JobKind.MAINTENANCE.value),
        str(job.id),
        expires_seconds=expires_seconds,
    )


# -- the catalog the workers publish -----------------------------------------------------------
#
# The tasks are registered by the workers' modules (``workers.maintenance.tasks``), which the
# API does not import (no service imports another's package). Each worker that can run
# maintenance publishes the catalog it runs, with the schedule its beat uses, into PostgreSQL
# at start; the admin API lists and accepts what the workers published.

CATALOG_FLAG = "maintenance_tasks"


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    schedule: str  # the cron expression beat uses (UTC), or "off"
    lock_seconds: int


@dataclass(frozen=True)
class Catalog:
    tasks: dict[str, CatalogEntry]
    max_attempts: int = 2

    def to_json(self) -> dict[str, Any]:
        return {
            "max_attempts": self.max_attempts,
            "tasks": [
                {
                    "name": t.name,
                    "description": t.description,
                    "schedule": t.schedule,
                    "lock_seconds": t.lock_seconds,
                }
                for t in self.tasks.values()
            ],
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Catalog:
        entries = [CatalogEntry(**entry) for entry in value.get("tasks", [])]
        return cls(
            {e.name: e for e in sorted(entries, key=lambda e: e.name)},
            int(value.get("max_attempts", 2)),
        )


def publish_catalog(session: Session, catalog: Catalog) -> None:
    from haven.read_only import FlagRepository

    FlagRepository(session).put(CATALOG_FLAG, catalog.to_json())


def read_catalog(session: Session) -> Catalog:
    from haven.read_only import FlagRepository

    value = FlagRepository(session).get(CATALOG_FLAG)
    return Catalog.from_json(value) if value else Catalog({})
