"""Restoring a backup: validate it whole first, then fill EMPTY stores in order, then prove
the result is the backup.

1. The manifest is read and every file's size and sha256 checked (``dry_run`` stops here);
   a file that does not match refuses the restore, naming the file.
2. The stores must be empty (no table, no object, no point); ``force`` empties them first.
3. PostgreSQL (``pg_restore`` of the dump), then the objects (each checked against its
   sha256 as it streams back), then the vectors: the exported points written back, or, for a
   backup without vectors, every current document version re-queued for ingest, so the
   workers rebuild the index from PostgreSQL and the objects through the normal pipeline.
4. Verification: every table's row count and checksum, every object's size and sha256, the
   collection's point count, and the top-10 ids of the recorded queries in every mode (run
   with the vectors recorded at backup time, so the check needs no embedding service).
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from minio import Minio
from sqlalchemy import Engine, text

from haven.backup import objects as object_copy
from haven.backup import postgres
from haven.backup.create import MODES, top_ids
from haven.backup.manifest import read_manifest, verify_files
from haven.backup.target import BackupError, BackupTarget
from haven.backup.vectors import create_collection, points_from
from haven.db.engine import make_session_factory, transaction
from haven.index import ChunkIndex
from haven.index_pointer import IndexPointers
from haven.maintenance_settings import BackupSettings
from haven.search import QueryVectors
from haven.settings import StoreSettings
from haven.vectorstore import Filter, SparseVector

log = structlog.get_logger("haven.restore")

Progress = Callable[[str], None]


@dataclass
class Stores:
    """The stores a restore fills."""

    stores: StoreSettings
    backup: BackupSettings
    engine: Engine
    s3: Minio
    index: ChunkIndex


def dry_run(
    target: BackupTarget, backup_id: str, *, progress: Progress = lambda line: None
) -> dict[str, Any]:
    """Validate the manifest and every file's sha256; raises ``BackupError`` naming the first
    file that does not match."""
    manifest = read_manifest(target, backup_id)
    checked = 0
    size = 0
    for _path, bytes_ in verify_files(target, backup_id, manifest):
        checked += 1
        size += bytes_
        if checked % 200 == 0:
            progress(f"checked {checked}/{len(manifest['files'])} files")
    return {
        "backup_id": backup_id,
        "created_at": manifest["created_at"],
        "haven_version": manifest["haven_version"],
        "schema_revision": manifest["schema_revision"],
        "files": checked,
        "bytes": size,
        "vectors": manifest["vectors"]["mode"],
        "queries": len(manifest["queries"]),
    }


def what_is_not_empty(dest: Stores) -> list[str]:
    found = []
    with dest.engine.connect() as conn:
        if not postgres.is_empty(conn):
            found.append("the database has tables")
    bucket = dest.stores.s3_bucket
    if dest.s3.bucket_exists(bucket) and next(
        iter(dest.s3.list_objects(bucket, recursive=True)), None
    ):
        found.append(f"bucket {bucket} has objects")
    if dest.index.exists() and dest.index.count() > 0:
        found.append(f"collection {dest.index.collection} has points")
    return found


def empty_stores(dest: Stores) -> None:
    """``--force``: everything in the database's public schema, the bucket's objects and the
    collection's points go."""
    with dest.engine.begin() as conn:
        postgres.wipe(conn)
    bucket = dest.stores.s3_bucket
    if dest.s3.bucket_exists(bucket):
        from minio.deleteobjects import DeleteObject

        names = [
            DeleteObject(o.object_name)
            for o in dest.s3.list_objects(bucket, recursive=True)
            if o.object_name
        ]
        for failed in dest.s3.remove_objects(bucket, names):
            raise BackupError("restore.empty_failed", f"could not delete object {failed.name}")
    if dest.index.exists():
        dest.index.store.delete_where(dest.index.collection, Filter())


def restore(
    dest: Stores,
    target: BackupTarget,
    backup_id: str,
    *,
    force: bool = False,
    reindex: Callable[[], int] | None = None,
    progress: Progress = lambda line: None,
) -> dict[str, Any]:
    """Restore ``backup_id`` into ``dest``; returns the report with the verification.
    ``reindex`` queues the rebuild of the index (a backup without vectors) and returns how
    many documents it queued; the caller waits for it before ``verify``."""
    started = time.monotonic()
    progress("validating the backup")
    checked = dry_run(target, backup_id, progress=progress)
    manifest = read_manifest(target, backup_id)
    occupied = what_is_not_empty(dest)
    if occupied and not force:
        raise BackupError(
            "restore.not_empty",
            "refusing to restore into stores that are not empty: "
            + "; ".join(occupied)
            + " (haven restore --force empties them first)",
            permanent=True,
        )
    if occupied:
        progress("emptying the stores (--force): " + "; ".join(occupied))
        empty_stores(dest)
    timings: dict[str, float] = {}

    progress("restoring PostgreSQL")
    step = time.monotonic()
    _restore_postgres(dest, target, backup_id, manifest)
    # The index pointer (blue/green re-index) came back with PostgreSQL: point it at the
    # collection the vectors are restored into (haven.index_pointer).
    with transaction(make_session_factory(dest.engine)) as session:
        IndexPointers(session, dest.index.collection).after_restore(
            dest.index.collection, vectors_restored=manifest["vectors"]["mode"] == "export"
        )
    timings["postgres"] = round(time.monotonic() - step, 2)

    progress(f"restoring {len(manifest['objects']['items'])} objects")
    step = time.monotonic()
    object_copy.copy_in(
        dest.s3, dest.stores.s3_bucket, target, backup_id, manifest["objects"]["items"]
    )
    timings["objects"] = round(time.monotonic() - step, 2)

    # Rows and objects are compared before anything else runs on them (a re-index changes
    # its jobs' rows).
    step = time.monotonic()
    verification = verify_rows_and_objects(dest, manifest)
    timings["verify_rows_and_objects"] = round(time.monotonic() - step, 2)

    step = time.monotonic()
    vectors = manifest["vectors"]
    queued = 0
    if vectors["mode"] == "export":
        progress(f"restoring the vectors of {dest.index.collection}")
        _restore_vectors(dest, target, backup_id, vectors)
        timings["vectors"] = round(time.monotonic() - step, 2)
        step = time.monotonic()
        verification.update(verify_vectors(dest, manifest))
        timings["verify_vectors"] = round(time.monotonic() - step, 2)
    elif reindex is not None:
        progress("no vectors in the backup: re-indexing from PostgreSQL and the objects")
        queued = reindex()
    report: dict[str, Any] = {
        **checked,
        "restored_into": {
            "bucket": dest.stores.s3_bucket,
            "collection": dest.index.collection,
        },
        "seconds": timings,
        "reindex_queued": queued,
        "verification": verification,
    }
    report["seconds"]["total"] = round(time.monotonic() - started, 2)
    return report


def _restore_postgres(
    dest: Stores, target: BackupTarget, backup_id: str, manifest: dict[str, Any]
) -> None:
    dump_name = manifest["postgres"]["file"]
    with dest.engine.connect() as conn:
        postgres.check_client(dest.backup.pg_restore, postgres.server_major(conn))
    with tempfile.TemporaryDirectory(prefix="haven-restore-") as folder:
        dump = Path(folder) / "postgres.dump"
        with dump.open("wb") as out:
            for chunk in target.open(backup_id, dump_name):
                out.write(chunk)
        postgres.restore_dump(
            dest.stores.database_url.get_secret_value(), dump, dest.backup.pg_restore
        )


def _restore_vectors(
    dest: Stores, target: BackupTarget, backup_id: str, vectors: dict[str, Any]
) -> None:
    index = dest.index
    if not index.exists():
        create_collection(index, vectors["schema"])
    for page in points_from(target.open(backup_id, vectors["file"])):
        index.store.upsert(index.collection, page)
    flush = getattr(index.store, "flush", None)
    if callable(flush):
        flush()


# -- verification ----------------------------------------------------------------------------


def _refuse(manifest: dict[str, Any], problems: list[str]) -> None:
    if problems:
        raise BackupError(
            "restore.verify_failed",
            f"the restored stores differ from backup {manifest['id']}: " + "; ".join(problems),
        )


# Tables a restore rewrites on purpose, compared by their rows only: the index pointer is
# pointed at the collection the vectors were restored into (``after_restore``).
REPOINTED = frozenset({"index_pointers"})


def verify(dest: Stores, manifest: dict[str, Any]) -> dict[str, Any]:
    """Compare the restored stores with what the backup recorded; ``BackupError`` listing
    every difference, else the comparison's summary."""
    return {**verify_rows_and_objects(dest, manifest), **verify_vectors(dest, manifest)}


def verify_rows_and_objects(dest: Stores, manifest: dict[str, Any]) -> dict[str, Any]:
    """Every table's rows and checksum, every object's size and sha256."""
    problems: list[str] = []
    expected_tables: dict[str, dict[str, Any]] = manifest["counts"]["tables"]
    with dest.engine.connect() as conn, conn.begin():
        found_tables = postgres.table_digests(conn)
    for name, expected in sorted(expected_tables.items()):
        found = found_tables.get(name)
        if found is None:
            problems.append(f"table {name} is missing")
        elif found != expected and not (name in REPOINTED and found["rows"] == expected["rows"]):
            problems.append(
                f"table {name}: {found['rows']} rows (expected {expected['rows']}), "
                f"checksum {'matches' if found['sha256'] == expected['sha256'] else 'differs'}"
            )

    expected_objects: dict[str, Any] = manifest["objects"]["items"]
    found_objects = object_copy.inventory(dest.s3, dest.stores.s3_bucket)
    for key in sorted(set(expected_objects) | set(found_objects)):
        if key not in found_objects:
            problems.append(f"object {key} is missing")
        elif key not in expected_objects:
            problems.append(f"object {key} is not in the backup")
        elif found_objects[key] != {
            "size": expected_objects[key]["size"],
            "sha256": expected_objects[key]["sha256"],
        }:
            problems.append(f"object {key} differs")
    _refuse(manifest, problems)
    return {
        "tables": len(expected_tables),
        "rows": sum(int(t["rows"]) for t in expected_tables.values()),
        "objects": len(expected_objects),
    }


def verify_vectors(dest: Stores, manifest: dict[str, Any]) -> dict[str, Any]:
    """The collection's point count, and the recorded queries' top-10 in every mode (run with
    the query vectors recorded at backup time: no embedding service needed)."""
    problems: list[str] = []
    vector_counts: dict[str, int] = {}
    for collection, expected_count in manifest["counts"]["vectors"].items():
        found_count = dest.index.count() if collection == dest.index.collection else -1
        vector_counts[collection] = found_count
        if found_count != expected_count:
            problems.append(
                f"collection {collection}: {found_count} points (expected {expected_count})"
            )

    same_top = 0
    for query in manifest["queries"]:
        vectors = QueryVectors(
            alias=query["alias"],
            dense=list(query["dense"]),
            sparse=SparseVector(list(query["sparse"]["indices"]), list(query["sparse"]["values"])),
        )
        found_top = top_ids(dest.index, uuid.UUID(query["tenant_id"]), vectors)
        for mode in MODES:
            if found_top[mode] != query["top"][mode]:
                problems.append(f"query {query['text']!r} ({mode}): the top-10 differs")
            else:
                same_top += 1
    _refuse(manifest, problems)
    return {
        "vectors": vector_counts,
        "queries_checked": len(manifest["queries"]),
        "top10_identical": same_top,
    }


def fail_interrupted_jobs(engine: Engine, platform_tenant: uuid.UUID) -> int:
    """The maintenance runs that were queued or running when the backup was taken (the
    backup's own run among them) cannot go on after a restore: they end failed."""
    with engine.begin() as conn:
        result = conn.execute(
            text(
                "UPDATE jobs SET state = 'failed', last_error = 'restore.interrupted', "
                "last_error_message = 'the stores were restored from a backup taken while "
                "this run was queued or running', finished_at = now(), updated_at = now() "
                "WHERE tenant_id = :tenant AND kind = 'maintenance' "
                "AND state IN ('queued', 'running')"
            ),
            {"tenant": platform_tenant},
        )
        return int(result.rowcount)


def requeue_current_versions(engine: Engine) -> list[uuid.UUID]:
    """The re-index of a backup without vectors: the ingest job of every document's current
    version goes back to the queue (a fresh budget of attempts), so the workers extract,
    chunk, embed and index it again from its object. Chunk ids are derived from the
    document, version and position, so the rebuilt points are the ones the rows name."""
    with engine.begin() as conn:
        rows = conn.execute(
            text(
                "UPDATE jobs AS j SET state = 'queued', attempts = 0, last_error = NULL, "
                "last_error_message = NULL, cancel_requested = false, finished_at = NULL, "
                "progress_done = 0, updated_at = now() "
                "FROM document_versions AS v JOIN documents AS d "
                "ON d.id = v.document_id AND d.current_version = v.version "
                "WHERE j.subject_id = v.id AND j.kind = 'ingest' AND j.state = 'ready' "
                "RETURNING j.id"
            )
        ).all()
    return [row[0] for row in rows]
