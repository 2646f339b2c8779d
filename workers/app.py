"""The workers' Celery application: the shared queue topology, one task per job kind that has
a handler (all run by ``workers.jobs.runner``), and the periodic upkeep.

``create_worker_app(settings)`` builds it; ``workers.main`` is the entry point Celery's CLI
loads (``celery -A workers.main worker``). The worker consumes the queues named in
``HAVEN_WORKER_QUEUES`` (every workload by default), so a deployment can give slow workloads
workers of their own.

One Celery task per kind, not one generic task: each is routed by its name to its workload's
queue, and the broker's counters, the worker's log and a dead letter all name the pipeline,
while the message carries only the job id.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import structlog
from celery import Celery, Task
from celery.exceptions import Reject
from celery.signals import worker_init
from prometheus_client import start_http_server

from haven import __version__
from haven.dead_letters import drain_dead_letters
from haven.ops_metrics import WORKER_METRICS
from haven.queueing import (
    DRAIN_DEAD_TASK,
    REAP_TASK,
    create_celery,
    declare_topology,
    task_for,
)
from haven.telemetry import configure_service_logging
from haven.tracing import configure_tracing
from workers.jobs import reaper, registry
from workers.jobs.handler import JobHandler
from workers.jobs.runner import run_job
from workers.runtime import runtime_for
from workers.settings import WorkerSettings

__all__ = ["create_worker_app"]

log = structlog.get_logger("haven.worker")


class JobTask(Task):  # type: ignore[misc]
    """Restores the request id of the API call that created the job into every log line."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        structlog.contextvars.clear_contextvars()
        headers = (self.request.headers or {}) if self.request else {}
        structlog.contextvars.bind_contextvars(
            task=self.name,
            job_id=str(args[0]) if args else None,
            request_id=headers.get("request_id"),
            tenant_id=headers.get("tenant_id"),
        )
        return super().__call__(*args, **kwargs)


def _register_job_task(app: Celery, handler: JobHandler) -> None:
    # No Celery retry cap (``max_retries=None`` on the task: ``retry(max_retries=None)`` alone
    # means Celery's default of 3): the runner counts attempts itself, and a deferred job or
    # one waiting for another worker's lock is sent again as often as it takes.
    @app.task(
        bind=True,
        base=JobTask,
        name=task_for(handler.kind.value),
        acks_late=True,
        shared=False,
        max_retries=None,
    )
    def run(self: Task, job_id: str) -> str:
        started = time.monotonic()
        ended: str | None = None
        try:
            ended = run_job(self, runtime_for(app), handler, uuid.UUID(job_id))
            return ended
        except Reject:  # failed, its message dead-lettered
            ended = "failed"
            raise
        finally:
            if ended in ("ready", "failed", "canceled"):
                WORKER_METRICS.job_ended(handler.kind.value, ended, time.monotonic() - started)

    del run


def _serve_runner_health(app: Celery, settings: WorkerSettings) -> None:
    """The runner's /healthz and /readyz (a no-op sandbox run), when this worker runs code."""
    if settings.runner_health_port and "run" in settings.worker_queues:
        from workers.runs.health import serve_in_thread

        sandbox = runtime_for(app).sandbox
        serve_in_thread(sandbox, settings.runner_health_host, settings.runner_health_port)
        ready = sandbox.readiness(fresh=True)
        log.info("runner.sandbox", ready=ready.ok, reason=ready.reason)


def _schedule_maintenance(app: Celery, settings: WorkerSettings) -> None:
    """Beat enqueues each maintenance task on its cron schedule; the job runs on the
    ``maintenance`` queue like any other (``workers.maintenance``)."""
    from workers.maintenance.enqueue import enqueue_run, maintenance_schedule
    from workers.maintenance.schedule import ENQUEUE_TASK, beat_entries

    schedule = maintenance_schedule(settings.maintenance)  # checked even when not scheduled
    if settings.maintenance.scheduled:
        app.conf.beat_schedule = {**app.conf.beat_schedule, **beat_entries(schedule)}

    @app.task(name=ENQUEUE_TASK, acks_late=True, shared=False)
    def enqueue_maintenance(name: str) -> str:
        if runtime_for(app).read_only.current().on:  # a new job is a write: none now
            return "read-only"
        job_id, _created = enqueue_run(runtime_for(app), name, trigger="schedule")
        return job_id

    del enqueue_maintenance


def _publish_maintenance(app: Celery) -> None:
    from workers.maintenance.enqueue import publish

    try:
        publish(runtime_for(app))
    except Exception as exc:  # the admin API lists the last published catalog meanwhile
        log.warning("maintenance.publish_failed", error=str(exc))


def create_worker_app(settings: WorkerSettings) -> Celery:
    configure_service_logging(settings)
    configure_tracing("worker", settings.otel_endpoint, version=__version__)
    app = create_celery(settings, beat_interval=settings.reaper_interval_seconds)
    app.conf.haven_settings = settings
    # Threads, not forked processes: jobs wait on emb, PostgreSQL and the object store, and
    # each thread shares the process's connections and chunking tokenizer.
    app.conf.worker_pool = "threads"
    app.conf.worker_concurrency = settings.worker_concurrency
    settings.beat_schedule_path.parent.mkdir(parents=True, exist_ok=True)
    app.conf.beat_schedule_filename = str(settings.beat_schedule_path)
    # What this worker consumes (``celery worker -Q`` still overrides it).
    app.amqp.queues.select(settings.worker_queues)

    for handler in registry.load().values():
        _register_job_task(app, handler)

    @app.task(name=REAP_TASK, acks_late=True, shared=False)
    def reap_jobs() -> dict[str, int]:
        if runtime_for(app).read_only.current().on:  # it writes: paused with every write
            return {}
        return reaper.reap_jobs(runtime_for(app))

    @app.task(name=DRAIN_DEAD_TASK, acks_late=True, shared=False)
    def drain_dead() -> int:
        if runtime_for(app).read_only.current().on:
            return 0
        return drain_dead_letters(app, runtime_for(app).session_factory)

    _schedule_maintenance(app, settings)

    @worker_init.connect(weak=False)
    def _prepare(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return
        declare_topology(app)
        if "maintenance" in settings.worker_queues:
            _publish_maintenance(app)
        _serve_runner_health(app, settings)
        if settings.worker_metrics_port:
            start_http_server(settings.worker_metrics_port, registry=WORKER_METRICS.registry)
        try:  # load the tokenizer and language models now rather than inside the first job
            if "ingest" not in settings.worker_queues:  # e.g. the runner: no chunking here
                hearing = runtime_for(app).cancels  # its subscriber thread starts here
                del hearing
                return
            runtime_for(app).warm()
        except Exception as exc:  # jobs will retry until the model store is reachable
            log.warning("worker.warm_failed", error=str(exc))

    del reap_jobs, drain_dead
    return app
