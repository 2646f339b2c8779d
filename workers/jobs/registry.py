"""Which handler runs which job kind. A pipeline registers its handler when its module is
imported; ``workers.app`` imports the pipelines in ``PIPELINES`` and makes one Celery task per
registered kind."""

from __future__ import annotations

import importlib

from haven.db.tables import JobKind
from haven.queueing import JOB_TASKS
from workers.jobs.handler import JobHandler

# The modules that register the workers' handlers. A new pipeline (analyze, review, run,
# maintenance) adds its module here: ``workers/<pipeline>/handler.py`` calling ``register``.
PIPELINES = (
    "workers.ingest.handler",
    "workers.review.handler",
    "workers.jobs.probe",
    # code runs in the sandbox
    "workers.runs.handler",
    # analyses (#18)
    "workers.analyze.handler",
    # nightly maintenance: backups, retention, clean-up (workers/maintenance/tasks.py)
    "workers.maintenance.handler",
)

_handlers: dict[JobKind, JobHandler] = {}


def register(handler: JobHandler) -> JobHandler:
    if handler.kind.value not in JOB_TASKS:
        raise ValueError(f"no task is named for {handler.kind} jobs (haven.queueing.JOB_TASKS)")
    _handlers[handler.kind] = handler
    return handler


def load() -> dict[JobKind, JobHandler]:
    """Import every pipeline; their handlers by kind."""
    for module in PIPELINES:
        importlib.import_module(module)
    return dict(_handlers)


def handler_for(kind: JobKind) -> JobHandler:
    return _handlers[kind]
