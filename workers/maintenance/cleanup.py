"""The ``cleanup`` task: orphans between the object store, PostgreSQL, the vector store
and Redis (rules in ``haven/cleanup.py``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from haven.cleanup import Cleanup
from workers.maintenance.tasks import TaskContext, maintenance_task


@maintenance_task(
    "cleanup",
    cron="30 3 * * *",
    description="Remove orphaned objects and vectors, abandoned uploads and stale answer-cache "
    "lists; report rows whose object is gone (params: dry_run).",
)
def cleanup(ctx: TaskContext) -> dict[str, Any]:
    rt = ctx.rt
    s = rt.settings
    ctx.check_cancel()
    report = Cleanup(
        rt.session_factory,
        rt.s3,
        s.s3_bucket,
        rt.store,
        rt.pointer.get().collections,
        rt.redis,
        grace=timedelta(hours=s.cleanup_grace_hours),
        dry_run=bool(ctx.params.get("dry_run")),
    ).run()
    return report.to_json()
