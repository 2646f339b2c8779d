"""Backup retention: the newest complete backup of each of the last ``keep_daily`` days that
have one, and of each of the last ``keep_weekly`` ISO weeks, are kept; the newest complete
backup always is. Incomplete backups (no manifest) older than a day are removed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from haven.backup.create import backup_time
from haven.backup.target import MANIFEST, BackupTarget

log = structlog.get_logger("haven.backup")

INCOMPLETE_GRACE = timedelta(days=1)


def to_keep(ids: list[str], *, keep_daily: int, keep_weekly: int) -> set[str]:
    """Which of the complete backups ``ids`` retention keeps."""
    dated = sorted(
        ((at, backup_id) for backup_id in ids if (at := backup_time(backup_id)) is not None),
        reverse=True,
    )
    keep: set[str] = set()
    days: set[object] = set()
    weeks: set[object] = set()
    for at, backup_id in dated:  # newest first: the first of each day/week is its newest
        day = at.date()
        week = at.isocalendar()[:2]
        if day not in days and len(days) < keep_daily:
            days.add(day)
            keep.add(backup_id)
        if week not in weeks and len(weeks) < keep_weekly:
            weeks.add(week)
            keep.add(backup_id)
    if dated:
        keep.add(dated[0][1])
    return keep


def apply_retention(
    target: BackupTarget, *, keep_daily: int, keep_weekly: int, now: datetime | None = None
) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    all_ids = target.backups()
    complete = [b for b in all_ids if target.exists(b, MANIFEST)]
    keep = to_keep(complete, keep_daily=keep_daily, keep_weekly=keep_weekly)
    deleted: list[str] = []
    for backup_id in all_ids:
        if backup_id in keep:
            continue
        if backup_id not in complete:
            at = backup_time(backup_id)
            if at is None or now - at < INCOMPLETE_GRACE:
                continue  # perhaps still being written
        target.delete(backup_id)
        deleted.append(backup_id)
    if deleted:
        log.info("backup.retention", deleted=deleted, kept=sorted(keep))
    return {"kept": sorted(keep), "deleted": deleted}
