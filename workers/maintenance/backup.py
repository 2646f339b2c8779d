"""``backup`` and ``backup-retention``: the nightly backup into the backup target
(``haven.backup``), and the removal of backups past the retention (N daily, M weekly)."""

from __future__ import annotations

from typing import Any

from haven.backup.create import Sources, run_backup
from haven.backup.retention import apply_retention
from haven.backup.target import make_target
from models.store import registry_from_settings
from workers.maintenance.tasks import TaskContext, maintenance_task


def _model_aliases(ctx: TaskContext) -> dict[str, Any]:
    registry = registry_from_settings(ctx.rt.settings, attempts=1)
    return {r.alias: {"name": r.name, "version": r.version} for r in registry.aliases()}


@maintenance_task(
    "backup",
    cron="0 2 * * *",
    description=(
        "Back up PostgreSQL (pg_dump -Fc), the raw objects and the vectors, with a manifest, "
        "into the backup target (HAVEN_BACKUP_*)."
    ),
    lock_seconds=6 * 3600,
)
def backup(ctx: TaskContext) -> dict[str, Any]:
    rt = ctx.rt
    settings = rt.settings
    sources = Sources(
        stores=settings,
        backup=settings.backup,
        engine=rt.session_factory.kw["bind"],
        s3=rt.s3,
        index=rt.index,
        emb=rt.emb,
        emb_alias=settings.emb_aliases[0],
        model_aliases=lambda: _model_aliases(ctx),
    )
    queries = ctx.params.get("queries")
    return run_backup(
        sources,
        make_target(settings.backup, settings),
        queries=[str(q) for q in queries] if isinstance(queries, list) else None,
        progress=ctx.progress,
        check_cancel=ctx.check_cancel,
    )


@maintenance_task(
    "backup-retention",
    cron="30 3 * * *",
    description=(
        "Delete backups past the retention (HAVEN_BACKUP_KEEP_DAILY / _KEEP_WEEKLY) and "
        "incomplete ones older than a day."
    ),
    lock_seconds=3600,
)
def backup_retention(ctx: TaskContext) -> dict[str, Any]:
    settings = ctx.rt.settings
    return apply_retention(
        make_target(settings.backup, settings),
        keep_daily=settings.backup.keep_daily,
        keep_weekly=settings.backup.keep_weekly,
    )
