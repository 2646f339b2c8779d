"""Jobs created in a request, sent to the broker after the request's transaction commits.

If a send fails after the commit, the job stays ``queued`` in PostgreSQL and the reaper sends
it again; the worker's claim makes a second delivery harmless.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from haven.queueing import send_job_once

if TYPE_CHECKING:
    from api.runtime import ApiRuntime

log = structlog.get_logger("haven.api.outbox")


@dataclass
class JobOutbox:
    pending: list[tuple[str, str]] = field(default_factory=list)
    forced: set[str] = field(default_factory=set)
    callbacks: list[Callable[[], object]] = field(default_factory=list)

    def add(self, task: str, job_id: object, *, force: bool = False) -> None:
        self.pending.append((task, str(job_id)))
        if force:
            self.forced.add(str(job_id))

    def after_commit(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` once the request's transaction has committed."""
        self.callbacks.append(callback)

    def __bool__(self) -> bool:
        return bool(self.pending or self.callbacks)

    def flush(self, runtime: ApiRuntime) -> None:
        bound = structlog.contextvars.get_contextvars()
        request_id = bound.get("request_id")
        for task, job_id in self.pending:
            try:
                send_job_once(
                    runtime.celery,
                    runtime.redis,
                    task,
                    job_id,
                    expires_seconds=runtime.settings.task_expires_seconds,
                    headers={"request_id": request_id, "tenant_id": bound.get("tenant_id")},
                    force=job_id in self.forced,
                )
            except Exception as exc:  # the reaper re-sends queued jobs whose message is lost
                log.warning("jobs.send_failed", job_id=job_id, task=task, error=str(exc))
        self.pending.clear()
        for callback in self.callbacks:
            try:
                callback()
            except Exception as exc:  # e.g. the object store is down: maintenance sweeps it
                log.warning("request.after_commit_failed", error=str(exc))
        self.callbacks.clear()
