"""The blue/green re-index task (see ``haven/reindex.py``): scheduled, it notices an
embedding alias moved and builds; on demand (``force``) it builds with the aliases' current
models. One task, so its lock also keeps a scheduled check and an operator's build apart."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from haven.errors import Conflict
from haven.reindex import Canceled, ReindexConfig, Reindexer
from models.store import registry_from_settings
from workers.maintenance.tasks import TaskContext, maintenance_task
from workers.runtime import WorkerRuntime


def reindexer(ctx: TaskContext) -> Reindexer:
    rt: WorkerRuntime = ctx.rt
    s = rt.settings
    return Reindexer(
        ReindexConfig(
            collection=s.qdrant_collection,
            aliases=list(s.emb_aliases),
            batch=s.reindex_batch,
            keep_previous=timedelta(hours=s.reindex_keep_previous_hours),
            recall_margin=s.reindex_recall_margin,
            eval_queries=s.reindex_eval_queries,
            pointer_cache_seconds=s.index_pointer_cache_seconds,
        ),
        rt.session_factory,
        rt.store,
        rt.emb,
        registry_from_settings(s),
        rt.redis,
        progress=ctx.progress,
        check_cancel=ctx.check_cancel,
        pointer_cache=rt.pointer,
    )


def _run(ctx: TaskContext, *, force: bool) -> dict[str, Any]:
    try:
        return reindexer(ctx).check(force=force)
    except Canceled as exc:
        return {"canceled": str(exc)}
    except Conflict as exc:
        # Another worker holds the build: this run has nothing to do.
        return {"skipped": exc.message}


@maintenance_task(
    "reindex-check",
    cron="*/15 * * * *",
    description="Re-index into a new collection when an embedding alias moved, or on demand "
    "(params: force; haven maintenance re-index), or resume a build; drop a previous "
    "collection whose rollback window ended.",
    # Renewed at every batch (progress): a run that died frees the task this long after.
    lock_seconds=1800,
)
def reindex_check(ctx: TaskContext) -> dict[str, Any]:
    return _run(ctx, force=bool(ctx.params.get("force")))
