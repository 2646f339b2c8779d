"""``stale-uploads``: presigned uploads that clients abandoned (``haven.uploads``): the rows
and any object of uploads that expired uncompleted more than an hour ago."""

from __future__ import annotations

from typing import Any

from haven.db.engine import transaction
from haven.uploads import sweep_abandoned_uploads
from workers.maintenance.tasks import TaskContext, maintenance_task

BATCH = 500


@maintenance_task(
    "stale-uploads",
    cron="15 * * * *",
    description="Remove presigned uploads that expired without being completed (row and object).",
    lock_seconds=900,
)
def sweep_stale_uploads(ctx: TaskContext) -> dict[str, Any]:
    removed = 0
    batches = 0
    while True:
        ctx.check_cancel()
        with transaction(ctx.rt.session_factory) as session:
            swept = sweep_abandoned_uploads(
                session, ctx.rt.s3, ctx.rt.settings.s3_bucket, limit=BATCH
            )
        removed += swept
        batches += 1
        ctx.progress(batches, batches + (1 if swept == BATCH else 0), "uploads")
        if swept < BATCH:
            return {"removed": removed}
