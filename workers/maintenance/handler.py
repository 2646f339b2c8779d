"""The maintenance job: runs the task named in ``params["task"]`` on the job runner.

One run of each task at a time, across every worker: the run holds the task's Redis lock
(``haven:maintenance:lock:<task>``, its value the job id) while it runs. The lock expires
``lock_seconds`` after the run's last progress, so a worker that died mid-run frees its task
by itself. A second run that finds the lock held ends ``failed`` with ``maintenance.busy``
naming the run that holds it (the API and the CLI already return a queued or running run
instead of adding one; this covers the rest).

The task's report is written on the job (``jobs.result``) in the transaction that finishes
it, with an audit row; every run is counted (``haven_maintenance_runs_total``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog
from redis.lock import Lock

from haven.db.engine import transaction
from haven.db.repositories import AuditLog
from haven.db.tables import JobKind, JobState
from haven.jobs import Reason
from haven.maintenance import platform_jobs
from haven.ops_metrics import WORKER_METRICS
from workers.jobs.handler import Claim, JobHandler, finish
from workers.jobs.heartbeat import Heartbeat, JobCanceled
from workers.jobs.registry import register
from workers.maintenance.tasks import MaintenanceTask, TaskContext, tasks
from workers.runtime import WorkerRuntime

log = structlog.get_logger("haven.maintenance")

UNKNOWN_TASK = "maintenance.unknown_task"
BUSY = "maintenance.busy"
# The lock is extended at most this often (on progress).
EXTEND_EVERY_SECONDS = 10.0


class UnknownTask(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class TaskBusy(Exception):
    """Another run of the task holds its lock."""

    def __init__(self, name: str, holder: str | None) -> None:
        super().__init__(name)
        self.name = name
        self.holder = holder

    @property
    def message(self) -> str:
        by = f" (job {self.holder})" if self.holder else ""
        return f"another run of {self.name} is running{by}; this one did nothing"


def lock_key(task: str) -> str:
    return f"haven:maintenance:lock:{task}"


def task_named(name: str) -> MaintenanceTask:
    found = tasks().get(name)
    if found is None:
        raise UnknownTask(name)
    return found


class TaskLock:
    """The task's lock, held by one run (``holder``: its job id, or ``cli:<uuid>``)."""

    def __init__(self, rt: WorkerRuntime, task: MaintenanceTask, holder: str) -> None:
        self.task = task
        self.holder = holder
        self.redis = rt.redis
        self.lock: Lock = rt.redis.lock(
            lock_key(task.name), timeout=task.lock_seconds, blocking=False, thread_local=False
        )
        self._extended = time.monotonic()

    def acquire(self) -> None:
        if self.lock.acquire(token=self.holder):
            return
        held = self.redis.get(lock_key(self.task.name))
        holder = held.decode() if isinstance(held, bytes) else held
        if holder == self.holder:
            # An earlier attempt of this same job holds it: its worker died mid-run and the
            # reaper gave the job back. This attempt takes the lock over.
            self.lock.local.token = self.holder.encode()
            self.lock.reacquire()
            return
        raise TaskBusy(self.task.name, holder)

    def extend(self) -> None:
        now = time.monotonic()
        if now - self._extended >= EXTEND_EVERY_SECONDS:
            self.lock.extend(self.task.lock_seconds, replace_ttl=True)
            self._extended = now

    def release(self) -> None:
        try:
            self.lock.release()
        except Exception:  # expired meanwhile (the run outlived lock_seconds)
            log.warning("maintenance.lock_lost", task=self.task.name, holder=self.holder)


def run_task(
    task: MaintenanceTask,
    context: TaskContext,
    lock: TaskLock,
) -> dict[str, Any]:
    """Run ``task`` under its lock, counted; the lock is released however the run ends."""
    started = time.monotonic()
    outcome = "failed"
    try:
        lock.acquire()
    except TaskBusy:
        WORKER_METRICS.maintenance_ended(task.name, "busy", 0.0)
        raise
    try:
        log.info("maintenance.start", task=task.name, job_id=str(context.job_id))
        report = task.run(context)
        outcome = "ready"
        return report
    except JobCanceled:
        outcome = "canceled"
        raise
    finally:
        lock.release()
        seconds = time.monotonic() - started
        WORKER_METRICS.maintenance_ended(task.name, outcome, seconds)
        log.info("maintenance.end", task=task.name, outcome=outcome, seconds=round(seconds, 1))


def run_here(
    rt: WorkerRuntime,
    name: str,
    params: dict[str, Any] | None = None,
    *,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Run a task in this process without a job (``haven maintenance run --here``)."""
    task = task_named(name)
    lock = TaskLock(rt, task, f"cli:{uuid.uuid4()}")

    def report_progress(done: int, total: int, label: str) -> None:
        lock.extend()
        if progress is not None:
            progress(done, total, label)

    context = TaskContext(rt=rt, job_id=None, params=dict(params or {}), progress=report_progress)
    return run_task(task, context, lock)


class MaintenanceHandler(JobHandler):
    kind = JobKind.MAINTENANCE
    steps = 0  # the task reports its own total
    subject_label = "maintenance task"

    def run(self, rt: WorkerRuntime, claim: Claim, beat: Heartbeat) -> None:
        task = task_named(str(claim.params.get("task", "")))
        # A step of a maintenance task (a pg_dump) may take as long as the task may hold
        # its lock.
        beat(done=0, deadline=float(task.lock_seconds))
        lock = TaskLock(rt, task, str(claim.job_id))

        def progress(done: int, total: int, label: str) -> None:
            lock.extend()
            beat(done=done, total=total, deadline=float(task.lock_seconds))
            log.info("maintenance.progress", task=task.name, done=done, total=total, step=label)

        def canceled() -> None:
            beat(deadline=float(task.lock_seconds))

        context = TaskContext(
            rt=rt,
            job_id=claim.job_id,
            params={k: v for k, v in claim.params.items() if k not in ("task", "trigger")},
            progress=progress,
            canceled=canceled,
        )
        report = run_task(task, context, lock)
        with transaction(rt.session_factory) as session:
            platform_jobs(session).set_result(claim.job_id, claim.attempt, report)
            AuditLog(session, None, None).record(
                "maintenance.done",
                target_type="maintenance",
                target_id=task.name,
                tenant_id=None,
                job_id=str(claim.job_id),
            )
            finish(session, claim)

    def ended(self, rt: WorkerRuntime, claim: Claim, state: JobState) -> None:
        with transaction(rt.session_factory) as session:
            AuditLog(session, None, None).record(
                f"maintenance.{state.value}",
                target_type="maintenance",
                target_id=str(claim.params.get("task", "")),
                tenant_id=None,
                job_id=str(claim.job_id),
            )

    def reason(self, exc: Exception) -> Reason | None:
        if isinstance(exc, UnknownTask):
            return Reason(UNKNOWN_TASK, f"no maintenance task is named {exc.name!r}", True)
        if isinstance(exc, TaskBusy):
            return Reason(BUSY, exc.message, True)
        code = getattr(exc, "code", None)
        message = getattr(exc, "message", None)
        if isinstance(code, str) and isinstance(message, str) and code.startswith("backup."):
            return Reason(code, message[:500], bool(getattr(exc, "permanent", False)))
        return None


register(MaintenanceHandler())
