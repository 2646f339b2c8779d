"""Presigned uploads that clients abandoned: swept by the maintenance schedule.

An upload that expired without being completed holds a row and, if the client sent the file
but never completed it, an object under ``tenant/<id>/uploads/``. Neither is reachable any
more (``complete`` refuses an expired upload), so both go.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog
from minio import Minio
from minio.error import S3Error
from sqlalchemy.orm import Session

from haven.db.repositories import AbandonedUploads

log = structlog.get_logger("haven.uploads")

# An expired upload is kept this long before it is swept, so that a `complete` that raced
# the expiry has answered (410) before the row it reads goes away.
DEFAULT_GRACE = timedelta(hours=1)


def sweep_abandoned_uploads(
    session: Session,
    s3: Minio,
    bucket: str,
    *,
    grace: timedelta = DEFAULT_GRACE,
    limit: int = 500,
    now: datetime | None = None,
) -> int:
    """Remove up to ``limit`` uploads that expired more than ``grace`` ago without being
    completed: the object first, then the row. The caller commits; a failure part-way leaves
    the remaining rows for the next run. Returns how many were removed."""
    cutoff = (now or datetime.now(UTC)) - grace
    abandoned = AbandonedUploads(session)
    removed = 0
    for upload in abandoned.expired_before(cutoff, limit=limit):
        try:
            s3.remove_object(bucket, upload.object_key)
        except S3Error as exc:
            if exc.code not in ("NoSuchKey", "NoSuchObject"):
                raise
        abandoned.delete(upload)
        removed += 1
    if removed:
        log.info("uploads.swept", removed=removed)
    return removed
