"""Taking a backup: PostgreSQL, the raw objects and the vectors into a backup target, with a
manifest written last (a backup without one is incomplete, and retention removes it).

Order: the database's snapshot is taken first and held while ``pg_dump`` reads it and the
checksums are computed in it; then the objects are copied, then the vectors exported, then
the fixed queries' top-10 recorded. A document uploaded meanwhile may therefore have its
object or vectors in the backup but not its rows: a restore is compared with what the backup
recorded, and such strays are what the clean-up task finds (objects without rows).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from minio import Minio
from sqlalchemy import Engine, func, select

from haven import __version__
from haven.backup import objects as object_copy
from haven.backup import postgres
from haven.backup.manifest import FORMAT
from haven.backup.target import MANIFEST, BackupTarget, Written
from haven.backup.vectors import ExportStream, collection_schema, server_snapshots, vectors_path
from haven.db.tables import Chunk
from haven.emb_client import EmbClient
from haven.index import ChunkIndex
from haven.maintenance_settings import BackupSettings
from haven.search import Mode, QueryVectors, SearchParams, search
from haven.settings import StoreSettings
from haven.vectorstore import ServerStore, SparseVector

log = structlog.get_logger("haven.backup")

DUMP = "postgres.dump"
MODES: tuple[Mode, ...] = ("dense", "lexical", "hybrid")
TOP = 10
ID_FORMAT = "%Y%m%dT%H%M%SZ"


@dataclass
class Sources:
    """What a backup reads: the live stores."""

    stores: StoreSettings
    backup: BackupSettings
    engine: Engine
    s3: Minio
    index: ChunkIndex
    emb: EmbClient | None = None
    emb_alias: str | None = None
    model_aliases: Callable[[], dict[str, Any]] = field(default=lambda: {})


def new_backup_id(target: BackupTarget, now: datetime) -> str:
    base = now.astimezone(UTC).strftime(ID_FORMAT)
    taken = set(target.backups())
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def backup_time(backup_id: str) -> datetime | None:
    try:
        return datetime.strptime(backup_id.split("-")[0], ID_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def run_backup(
    sources: Sources,
    target: BackupTarget,
    *,
    queries: list[str] | None = None,
    progress: Callable[[int, int, str], None] = lambda done, total, label: None,
    check_cancel: Callable[[], None] = lambda: None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Take a backup into ``target``; returns its report (the manifest's summary)."""
    started = time.monotonic()
    backup_id = new_backup_id(target, now or datetime.now(UTC))
    files: dict[str, Written] = {}
    steps = 5
    log.info("backup.start", backup_id=backup_id, target=target.description)

    # 1. PostgreSQL: one snapshot for the dump and the checksums.
    progress(0, steps, "postgres")
    url = sources.stores.database_url.get_secret_value()
    with postgres.snapshot(sources.engine) as (conn, snapshot_id):
        server = postgres.server_major(conn)
        client = postgres.check_client(sources.backup.pg_dump, server)
        revision = postgres.schema_revision(conn)
        digests = postgres.table_digests(conn)
        with postgres.dump_stream(url, snapshot_id, sources.backup.pg_dump) as stream:
            files[DUMP] = target.write(backup_id, DUMP, stream)
    check_cancel()

    # 2. The raw objects.
    progress(1, steps, "objects")
    bucket = sources.stores.s3_bucket
    copied = object_copy.copy_out(
        sources.s3,
        bucket,
        target,
        backup_id,
        progress=lambda done: check_cancel() if done % 100 == 0 else None,
    )
    for key, written in copied.items():
        files[object_copy.object_path(key)] = written
    check_cancel()

    # 3. The vectors.
    progress(2, steps, "vectors")
    index = sources.index
    vectors: dict[str, Any]
    vector_counts: dict[str, int] = {}
    if sources.backup.vectors == "none" or not index.exists():
        reason = "not exported (settings)" if index.exists() else "no collection yet"
        vectors = {"mode": "none", "collection": index.collection, "reason": reason}
        if index.exists():  # what a re-index must rebuild
            vector_counts = {index.collection: index.count()}
    else:
        export = ExportStream(
            index.store,
            index.collection,
            lambda done: check_cancel() if done % 5000 == 0 else None,
        )
        path = vectors_path(index.collection)
        files[path] = target.write(backup_id, path, export)
        vectors = {
            "mode": "export",
            "engine": index.store.kind,
            "collection": index.collection,
            "file": path,
            "schema": collection_schema(index),
        }
        vector_counts[index.collection] = export.points
    if index.exists() and isinstance(index.store, ServerStore) and index.store.kind == "server":
        # The server's own snapshots too, and its alias map (which snapshots do not hold).
        try:
            vectors["server"] = server_snapshots(index.store.client, [index.collection])
        except Exception as exc:  # the export above is the backup; this is extra
            log.warning("backup.server_snapshot_failed", error=str(exc))
            vectors["server"] = {"error": str(exc)[:300]}
    check_cancel()

    # 4. The fixed queries' top-10, per mode.
    progress(3, steps, "queries")
    recorded = record_queries(sources, queries) if index.exists() else []

    # 5. The manifest, last.
    progress(4, steps, "manifest")
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "id": backup_id,
        "created_at": (now or datetime.now(UTC)).isoformat(),
        "haven_version": __version__,
        "build_version": sources.stores.build_version,
        "git_commit": sources.stores.git_commit,
        "schema_revision": revision,
        "postgres": {"file": DUMP, "server_major": server, "pg_dump_major": client},
        "model_aliases": _aliases(sources),
        "objects": {
            "bucket": bucket,
            "items": {k: {"size": w.size, "sha256": w.sha256} for k, w in copied.items()},
        },
        "vectors": vectors,
        "counts": {"tables": digests, "objects": len(copied), "vectors": vector_counts},
        "queries": recorded,
        "files": {p: {"size": w.size, "sha256": w.sha256} for p, w in sorted(files.items())},
    }
    body = json.dumps(manifest, indent=1, sort_keys=True).encode()
    target.write(backup_id, MANIFEST, _Bytes(body))
    seconds = round(time.monotonic() - started, 2)
    progress(steps, steps, "done")
    report = {
        "backup_id": backup_id,
        "target": target.description,
        "files": len(files),
        "bytes": sum(w.size for w in files.values()),
        "rows": {name: d["rows"] for name, d in digests.items()},
        "objects": len(copied),
        "vectors": vector_counts,
        "vectors_mode": vectors["mode"],
        "queries": len(recorded),
        "schema_revision": revision,
        "seconds": seconds,
    }
    log.info("backup.done", **{k: v for k, v in report.items() if k != "rows"})
    return report


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = len(self.data)
        out, self.data = self.data[:n], self.data[n:]
        return out


def _aliases(sources: Sources) -> dict[str, Any]:
    try:
        return sources.model_aliases()
    except Exception as exc:  # the model registry is away: the backup itself is still whole
        log.warning("backup.model_aliases_unavailable", error=str(exc))
        return {"unavailable": str(exc)[:200]}


# -- the fixed queries -------------------------------------------------------------------------


def _busiest_tenant(sources: Sources) -> uuid.UUID | None:
    with sources.engine.connect() as conn:
        row = conn.execute(
            select(Chunk.tenant_id, func.count())
            .group_by(Chunk.tenant_id)
            .order_by(func.count().desc(), Chunk.tenant_id)
            .limit(1)
        ).first()
    return row[0] if row else None


def default_queries(index: ChunkIndex, tenant_id: uuid.UUID, count: int) -> list[str]:
    """The first words of the tenant's first passages (by id): queries that find something."""
    texts: list[str] = []
    for page in index.points():
        for _, payload in page:
            if payload.get("tenant_id") != str(tenant_id):
                continue
            words = str(payload.get("text") or "").split()
            if len(words) >= 3:
                texts.append(" ".join(words[:8]))
            if len(texts) >= count:
                return texts
    return texts


def query_vectors(emb: EmbClient, alias: str, texts: list[str]) -> list[QueryVectors]:
    embedded = emb.embed(texts, aliases=[alias], sparse="query", input_type="query")
    return [
        QueryVectors(
            alias=alias,
            dense=item.dense[alias],
            sparse=SparseVector(item.sparse.indices, item.sparse.values)
            if item.sparse
            else SparseVector([], []),
        )
        for item in embedded.data
    ]


def top_ids(index: ChunkIndex, tenant_id: uuid.UUID, vectors: QueryVectors) -> dict[str, list[str]]:
    """The top-10 chunk ids of the query in each mode."""
    found: dict[str, list[str]] = {}
    for mode in MODES:
        outcome = search(
            index,
            tenant_id,
            vectors,
            SearchParams(mode=mode, top_k=TOP, channel_ranks=False),
        )
        found[mode] = [str(hit.chunk_id) for hit in outcome.hits]
    return found


def record_queries(sources: Sources, queries: list[str] | None) -> list[dict[str, Any]]:
    """Each query with its vectors (so a restore checks the index without the embedding
    service) and its top-10 per mode."""
    if sources.emb is None or sources.emb_alias is None:
        return []
    tenant_id = _busiest_tenant(sources)
    if tenant_id is None:
        return []
    texts = queries or sources.backup.verify_queries
    if not texts:
        texts = default_queries(sources.index, tenant_id, sources.backup.verify_query_count)
    if not texts:
        return []
    try:
        embedded = query_vectors(sources.emb, sources.emb_alias, texts)
    except Exception as exc:  # the backup is whole without them; the report says so
        log.warning("backup.queries_unavailable", error=str(exc))
        return []
    recorded = []
    for text, vectors in zip(texts, embedded, strict=True):
        recorded.append(
            {
                "tenant_id": str(tenant_id),
                "text": text,
                "alias": vectors.alias,
                "dense": vectors.dense,
                "sparse": {"indices": vectors.sparse.indices, "values": vectors.sparse.values},
                "top": top_ids(sources.index, tenant_id, vectors),
            }
        )
    return recorded
