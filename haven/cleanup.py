"""Orphans between the stores (the ``cleanup`` maintenance task).

What each rule finds and what it does with it:

- **objects without rows**: a document's bytes under ``tenant/<id>/raw/`` that no document
  version names, or an upload's under ``tenant/<id>/uploads/`` without its upload row, older
  than the grace period (an upload or a delete may be between its two writes now):
  deleted. Other prefixes (reviews, analyses, backups) belong to their own features and are
  not looked at.
- **rows without objects**: document versions whose object is gone: reported, never
  deleted (the row is the only trace of what was lost; a restore brings the object back).
- **vectors without chunk rows**: points of any collection of the index (live, building,
  previous) whose chunk has no row, unless their version is still being ingested (an
  ingest writes vectors before rows): deleted.
- **abandoned uploads**: ``haven.uploads.sweep_abandoned_uploads``, as it is.
- **answer-cache indexes**: the per-document lists of cached answers keep the keys of
  answers that expired since; those members are removed, and empty lists go.

A dry run finds and reports the same, and changes nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
import structlog
from minio import Minio
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from haven.answer_cache import PREFIX as ANSWER_PREFIX
from haven.db.engine import transaction
from haven.db.repositories import AbandonedUploads
from haven.db.tables import Chunk, DocumentState, DocumentVersion, Upload
from haven.index import ChunkIndex
from haven.uploads import DEFAULT_GRACE, sweep_abandoned_uploads
from haven.vectorstore import VectorStore

log = structlog.get_logger("haven.cleanup")

IN_PROGRESS = (DocumentState.QUEUED, DocumentState.PROCESSING)
SAMPLE = 20  # ids listed per finding in the report


@dataclass
class Finding:
    found: int = 0
    removed: int = 0
    sample: list[str] = field(default_factory=list)

    def add(self, item: str) -> None:
        self.found += 1
        if len(self.sample) < SAMPLE:
            self.sample.append(item)

    def to_json(self) -> dict[str, Any]:
        return {"found": self.found, "removed": self.removed, "sample": self.sample}


@dataclass
class CleanupReport:
    dry_run: bool
    objects_without_rows: Finding = field(default_factory=Finding)
    rows_without_objects: Finding = field(default_factory=Finding)
    vectors_without_rows: Finding = field(default_factory=Finding)
    abandoned_uploads: Finding = field(default_factory=Finding)
    answer_cache_entries: Finding = field(default_factory=Finding)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "objects_without_rows": self.objects_without_rows.to_json(),
            "rows_without_objects": {
                **self.rows_without_objects.to_json(),
                "note": "reported only: never deleted",
            },
            "vectors_without_rows": self.vectors_without_rows.to_json(),
            "abandoned_uploads": self.abandoned_uploads.to_json(),
            "answer_cache_entries": self.answer_cache_entries.to_json(),
        }


class Cleanup:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        s3: Minio,
        bucket: str,
        store: VectorStore,
        collections: list[str],
        redis_client: redis.Redis,
        *,
        grace: timedelta,
        dry_run: bool,
    ) -> None:
        self.session_factory = session_factory
        self.s3 = s3
        self.bucket = bucket
        self.store = store
        self.collections = collections
        self.redis = redis_client
        self.grace = grace
        self.report = CleanupReport(dry_run=dry_run)
        self.now = datetime.now(UTC)

    def run(self) -> CleanupReport:
        self.objects()
        self.vectors()
        self.uploads()
        self.answer_cache()
        log.info("cleanup.done", **self.report.to_json())
        return self.report

    # -- objects and rows --

    def objects(self) -> None:
        with transaction(self.session_factory) as session:
            versions = {
                key: str(version_id)
                for key, version_id in session.execute(
                    select(DocumentVersion.object_key, DocumentVersion.id)
                )
            }
            uploads = set(session.execute(select(Upload.object_key)).scalars())
        seen: set[str] = set()
        cutoff = self.now - self.grace
        for obj in self.s3.list_objects(self.bucket, prefix="tenant/", recursive=True):
            key = obj.object_name or ""
            seen.add(key)
            parts = key.split("/")
            if len(parts) < 4:
                continue
            kind = parts[2]
            referenced = key in versions if kind == "raw" else key in uploads
            if kind not in ("raw", "uploads") or referenced:
                continue
            if obj.last_modified is not None and obj.last_modified > cutoff:
                continue  # may be an upload between its object and its row
            finding = self.report.objects_without_rows
            finding.add(key)
            if not self.report.dry_run:
                self.s3.remove_object(self.bucket, key)
                finding.removed += 1
        for key, version_id in versions.items():
            if key not in seen:
                self.report.rows_without_objects.add(f"document_version {version_id}: {key}")

    # -- vectors --

    def vectors(self) -> None:
        finding = self.report.vectors_without_rows
        for collection in self.collections:
            index = ChunkIndex(self.store, collection)
            for page in index.points(batch=512):
                ids = [point_id for point_id, _ in page]
                with transaction(self.session_factory) as session:
                    rows = set(session.execute(select(Chunk.id).where(Chunk.id.in_(ids))).scalars())
                    versions = {str(p.get("version_id")) for i, p in page if i not in rows} - {
                        "None"
                    }
                    busy = {
                        str(v)
                        for v in session.execute(
                            select(DocumentVersion.id).where(
                                DocumentVersion.id.in_([_uuid(v) for v in versions if _uuid(v)]),
                                DocumentVersion.state.in_(IN_PROGRESS),
                            )
                        ).scalars()
                    }
                orphans = [
                    i
                    for i, payload in page
                    if i not in rows and str(payload.get("version_id")) not in busy
                ]
                for point_id in orphans:
                    finding.add(f"{collection}:{point_id}")
                if orphans and not self.report.dry_run:
                    self.store.delete_ids(collection, orphans)
                    finding.removed += len(orphans)

    # -- uploads and the answer cache --

    def uploads(self) -> None:
        finding = self.report.abandoned_uploads
        with transaction(self.session_factory) as session:
            if self.report.dry_run:
                for upload in AbandonedUploads(session).expired_before(
                    self.now - DEFAULT_GRACE, limit=500
                ):
                    finding.add(str(upload.id))
                return
            removed = sweep_abandoned_uploads(session, self.s3, self.bucket, now=self.now)
        finding.found = finding.removed = removed

    def answer_cache(self) -> None:
        finding = self.report.answer_cache_entries
        for members_key in self.redis.scan_iter(match=f"{ANSWER_PREFIX}-docs:*", count=500):
            members = list(self.redis.smembers(members_key))
            gone = [m for m in members if not self.redis.exists(m)]
            for member in gone:
                finding.add(member.decode() if isinstance(member, bytes) else str(member))
            if gone and not self.report.dry_run:
                self.redis.srem(members_key, *gone)
                finding.removed += len(gone)
                if len(gone) == len(members):
                    self.redis.delete(members_key)


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
