"""Maintenance tasks: what the nightly schedule (and an operator) runs for the whole platform.

A task is a function registered with ``@maintenance_task``; it receives a ``TaskContext`` and
returns its run's report (JSON-able), which is stored on the job. The maintenance job handler
(``workers.maintenance.handler``) runs one task per job under the task's lock, so one instance
of each task runs at a time; the lock expires after ``lock_seconds``, so a worker that died
mid-run does not hold its task forever. Celery beat enqueues a job per task on the task's cron
schedule (``HAVEN_MAINTENANCE_SCHEDULE``, ``workers.maintenance.schedule``).

The modules that register tasks are listed in ``TASK_MODULES``; ``tasks()`` imports them.
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.runtime import WorkerRuntime

__all__ = [
    "TASK_MODULES",
    "MaintenanceFn",
    "MaintenanceTask",
    "TaskContext",
    "maintenance_task",
    "tasks",
]

# The modules whose import registers tasks.
TASK_MODULES: tuple[str, ...] = (
    "workers.maintenance.backup",
    "workers.maintenance.uploads",
    "workers.maintenance.reindex",
    "workers.maintenance.cleanup",
    "workers.maintenance.warmup",
)


def _no_cancel() -> None:
    return None


@dataclass
class TaskContext:
    """What a task run gets: the worker's connections, its job, its parameters, and the
    job's progress and cancel."""

    rt: WorkerRuntime
    job_id: uuid.UUID | None  # None when run in-process by the CLI without a job
    params: dict[str, Any]
    progress: Callable[[int, int, str], None]  # (done, total, label) -> job progress
    canceled: Callable[[], None] = field(default=_no_cancel, repr=False)

    def check_cancel(self) -> None:
        """Raises ``workers.jobs.heartbeat.JobCanceled`` when the job was canceled."""
        self.canceled()


MaintenanceFn = Callable[[TaskContext], dict[str, Any]]  # returns the run's report (JSON-able)


@dataclass(frozen=True)
class MaintenanceTask:
    name: str
    run: MaintenanceFn
    cron: str  # the default schedule; HAVEN_MAINTENANCE_SCHEDULE overrides it
    description: str
    lock_seconds: int = 3600


_tasks: dict[str, MaintenanceTask] = {}


def maintenance_task(
    name: str, *, cron: str, description: str, lock_seconds: int = 3600
) -> Callable[[MaintenanceFn], MaintenanceFn]:
    """Register ``fn`` as the maintenance task ``name`` with its default ``cron`` schedule
    (five fields, UTC). ``lock_seconds`` bounds how long a run may hold the task's lock
    before another run may start (it should exceed the longest healthy run)."""
    from workers.maintenance.schedule import parse_cron

    parse_cron(cron)  # a wrong default fails at import, not at 2 a.m.
    if lock_seconds < 1:
        raise ValueError("lock_seconds must be at least 1")

    def register(fn: MaintenanceFn) -> MaintenanceFn:
        known = _tasks.get(name)
        if known is not None and known.run is not fn:
            raise ValueError(f"maintenance task {name!r} is registered twice")
        _tasks[name] = MaintenanceTask(name, fn, cron, description, lock_seconds)
        return fn

    return register


def tasks() -> dict[str, MaintenanceTask]:
    """Every registered task, by name (importing ``TASK_MODULES``)."""
    for module in TASK_MODULES:
        importlib.import_module(module)
    return dict(sorted(_tasks.items()))
