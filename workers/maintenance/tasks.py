"""The maintenance tasks' interface: a task is a function of a ``TaskContext`` returning a
JSON-able report, registered by ``maintenance_task``.

(A minimal version of the interface the maintenance framework provides; the framework's
schedule, job handler and lock replace it.)
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from workers.jobs.heartbeat import JobCanceled
from workers.runtime import WorkerRuntime


@dataclass
class TaskContext:
    rt: WorkerRuntime
    job_id: uuid.UUID | None
    params: dict[str, Any] = field(default_factory=dict)
    progress: Callable[[int, int, str], None] = lambda done, total, label: None
    canceled: Callable[[], bool] = lambda: False

    def check_cancel(self) -> None:
        """Raise ``JobCanceled`` when the job was canceled."""
        if self.canceled():
            raise JobCanceled()


MaintenanceFn = Callable[[TaskContext], dict[str, Any]]


@dataclass(frozen=True)
class MaintenanceTask:
    name: str
    fn: MaintenanceFn
    cron: str
    description: str
    lock_seconds: int


TASKS: dict[str, MaintenanceTask] = {}


def maintenance_task(
    name: str, *, cron: str, description: str, lock_seconds: int = 3600
) -> Callable[[MaintenanceFn], MaintenanceFn]:
    def register(fn: MaintenanceFn) -> MaintenanceFn:
        TASKS[name] = MaintenanceTask(name, fn, cron, description, lock_seconds)
        return fn

    return register
