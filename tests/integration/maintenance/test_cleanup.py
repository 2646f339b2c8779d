"""The clean-up task on real stores: an orphan planted in each (an object without a row, an
upload's object without its upload, a vector without a chunk row, an abandoned upload, a
stale answer-cache entry) is found, and removed; a row whose object is gone is only reported;
nothing a document still uses is touched; a dry run changes nothing."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta

from minio.error import S3Error
from sqlalchemy import select

from haven.answer_cache import PREFIX
from haven.db.engine import transaction
from haven.db.tables import Chunk, DocumentVersion, Upload
from haven.index import ChunkIndex, IndexedChunk, SparseVector
from tests.fixtures.api import upload
from tests.fixtures.maintenance_stack import ALIAS, Haven
from workers.maintenance.cleanup import cleanup


def put(haven: Haven, key: str, data: bytes = b"orphan") -> None:
    haven.rt.s3.put_object(haven.rt.settings.s3_bucket, key, io.BytesIO(data), len(data))


def exists(haven: Haven, key: str) -> bool:
    try:
        haven.rt.s3.stat_object(haven.rt.settings.s3_bucket, key)
    except S3Error:
        return False
    return True


def version_of(haven: Haven, document_id: uuid.UUID) -> DocumentVersion:
    with transaction(haven.factory) as session:
        found = session.execute(
            select(DocumentVersion).where(DocumentVersion.document_id == document_id)
        ).scalar_one()
        session.expunge(found)
        return found


def plant_point(haven: Haven, version: DocumentVersion) -> uuid.UUID:
    point = uuid.uuid4()
    index = haven.rt.index
    index.upsert(
        [
            IndexedChunk(
                id=point,
                dense={ALIAS: [0.1] * 32},
                sparse=SparseVector([], []),
                payload={
                    "tenant_id": str(version.tenant_id),
                    "document_id": str(version.document_id),
                    "version_id": str(version.id),
                    "text": "a passage nobody indexed",
                },
            )
        ]
    )
    return point


def test_cleanup_finds_orphans_in_every_store_and_removes_only_those(haven: Haven) -> None:
    kept = haven.ingest("The handbook says the office opens at eight.", "kept.txt")
    lost = haven.ingest("The archive room is in the basement.", "lost.txt")
    tenant = haven.who.tenant_id
    bucket = haven.rt.settings.s3_bucket
    kept_version, lost_version = version_of(haven, kept), version_of(haven, lost)
    live = haven.rt.index.collection

    # Planted orphans.
    orphan_raw = f"tenant/{tenant}/raw/ff/{'f' * 64}/{uuid.uuid4()}"
    orphan_upload = f"tenant/{tenant}/uploads/{uuid.uuid4()}"
    put(haven, orphan_raw)
    put(haven, orphan_upload)
    haven.rt.s3.remove_object(bucket, lost_version.object_key)  # a row without its object
    orphan_point = plant_point(haven, kept_version)
    # An ingest under way writes vectors before rows: its points are not orphans.
    pending = upload(haven.client, haven.who, b"still being ingested", "pending.txt").json()
    pending_version = version_of(haven, uuid.UUID(pending["document"]["id"]))
    pending_point = plant_point(haven, pending_version)
    abandoned_key = f"tenant/{tenant}/uploads/{uuid.uuid4()}"
    put(haven, abandoned_key)
    with transaction(haven.factory) as session:
        abandoned = Upload(
            tenant_id=tenant,
            object_key=abandoned_key,
            filename="never-completed.txt",
            expires_at=datetime.now(UTC) - timedelta(hours=2),
        )
        session.add(abandoned)
        session.flush()
        abandoned_id = abandoned.id
    answers = f"{PREFIX}-docs:{tenant}:{kept}"
    live_answer, gone_answer = f"{PREFIX}:{tenant}:live", f"{PREFIX}:{tenant}:expired"
    haven.rt.redis.set(live_answer, "{}", ex=600)
    haven.rt.redis.sadd(answers, live_answer, gone_answer)

    def state() -> dict[str, object]:
        with transaction(haven.factory) as session:
            upload_row = session.get(Upload, abandoned_id) is not None
            lost_row = session.get(DocumentVersion, lost_version.id) is not None
            chunks = len(session.execute(select(Chunk.id)).scalars().all())
        index = ChunkIndex(haven.rt.store, live)
        return {
            "orphan_raw": exists(haven, orphan_raw),
            "orphan_upload": exists(haven, orphan_upload),
            "kept_object": exists(haven, kept_version.object_key),
            "orphan_point": bool(index.existing_ids([orphan_point])),
            "pending_point": bool(index.existing_ids([pending_point])),
            "upload_row": upload_row,
            "abandoned_object": exists(haven, abandoned_key),
            "lost_row": lost_row,
            "chunks": chunks,
            "answers": {m.decode() for m in haven.rt.redis.smembers(answers)},
        }

    before = state()
    ctx = haven.context()
    ctx.params["dry_run"] = True
    dry = cleanup(ctx)
    assert state() == before  # a dry run only reports
    assert dry["dry_run"] is True
    assert orphan_raw in dry["objects_without_rows"]["sample"]
    assert orphan_upload in dry["objects_without_rows"]["sample"]
    assert dry["objects_without_rows"]["found"] == 2
    assert dry["vectors_without_rows"]["sample"] == [f"{live}:{orphan_point}"]
    assert dry["abandoned_uploads"]["sample"] == [str(abandoned_id)]
    assert dry["answer_cache_entries"]["sample"] == [gone_answer]
    assert dry["rows_without_objects"]["found"] == 1

    ctx.params["dry_run"] = False
    done = cleanup(ctx)
    after = state()
    assert done["objects_without_rows"]["removed"] == 2
    assert done["vectors_without_rows"]["removed"] == 1
    assert done["abandoned_uploads"]["removed"] == 1
    assert done["answer_cache_entries"]["removed"] == 1
    # The row whose object is gone is reported, by name, and kept.
    assert done["rows_without_objects"]["removed"] == 0
    assert str(lost_version.id) in done["rows_without_objects"]["sample"][0]
    assert after == {
        **before,
        "orphan_raw": False,
        "orphan_upload": False,
        "orphan_point": False,
        "upload_row": False,
        "abandoned_object": False,
        "answers": {live_answer},
    }
    # What documents use is untouched: the kept document is still found.
    assert haven.search("office opens at eight")["results"][0]["document_id"] == str(kept)
