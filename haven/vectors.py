"""The vector store of a process: a Qdrant server when ``QDRANT_URL`` is set, otherwise
Qdrant Edge in ``HAVEN_QDRANT_PATH`` (the embedded default; see ``haven.vectorstore``).

Edge lets one process open a shard, which is why the embedded default runs the API and the
workers in one process (``haven up``); inside that process they share one store.

Folders written by the embedded default of earlier releases (qdrant-client's local mode: a
``meta.json`` and SQLite files under ``collection/``) are carried over the first time the
store opens: every point, with its vectors and payload, is copied into Edge with progress in
the log, and the old files are then moved to ``local-mode-backup/`` (never deleted).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import structlog

from haven.index import ChunkIndex, chunk_schema
from haven.index_pointer import Pointer
from haven.settings import StoreSettings
from haven.vectorstore import EdgeStore, Point, ServerStore, SparseVector, VectorStore

log = structlog.get_logger("haven.vectors")

_embedded: dict[Path, EdgeStore] = {}
_lock = threading.Lock()

LOCAL_MODE_BACKUP = "local-mode-backup"
MIGRATION_BATCH = 1000


def make_qdrant(settings: StoreSettings) -> VectorStore:
    """The store of this process: a new server client, or the process's embedded store."""
    if settings.qdrant_url:
        from qdrant_client import QdrantClient

        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return ServerStore(QdrantClient(url=settings.qdrant_url, api_key=api_key, timeout=30))
    path = settings.qdrant_path.resolve()
    with _lock:
        store = _embedded.get(path)
        if store is None:
            path.mkdir(parents=True, exist_ok=True)
            store = EdgeStore(path)
            migrate_local_mode(store)
            _embedded[path] = store
        return store


def release_qdrant(settings: StoreSettings, store: VectorStore) -> None:
    """Close a server client; the embedded store stays open for the process's other users
    (its write-ahead log already holds every acknowledged write)."""
    if settings.qdrant_url:
        store.close()


def close_embedded(settings: StoreSettings) -> None:
    """Flush and close the process's embedded store, letting another process open it."""
    with _lock:
        store = _embedded.pop(settings.qdrant_path.resolve(), None)
    if store is not None:
        store.close()


def make_index(
    settings: StoreSettings, store: VectorStore, pointer: Pointer | None = None
) -> ChunkIndex:
    """The live collection of the index (``haven.index_pointer``; without a pointer, the
    configured collection), its deletes reaching the collections beside it."""
    if pointer is None:
        return ChunkIndex(store, settings.qdrant_collection)
    return ChunkIndex(store, pointer.live.collection, also=pointer.collections)


# -- carrying over local mode's data -------------------------------------------------------


def local_mode_collections(path: Path) -> list[str]:
    meta = path / "meta.json"
    if not meta.is_file():
        return []
    return sorted(json.loads(meta.read_text()).get("collections", {}))


def migrate_local_mode(store: EdgeStore) -> dict[str, int]:
    """Copy every collection of a local-mode folder into Edge, then move the old files
    aside. Returns the points copied per collection.

    Each collection is written to ``edge/<name>.migrating`` and renamed when complete, so a
    migration cut short starts that collection over at the next start instead of leaving a
    partial copy that looks finished."""
    path = store.path
    names = local_mode_collections(path)
    if not names:
        return {}
    from qdrant_client import QdrantClient

    copied: dict[str, int] = {}
    log.info("vectors.migrate.start", path=str(path), collections=names)
    client = QdrantClient(path=str(path))
    try:
        for name in names:
            if store.exists(name):
                log.info("vectors.migrate.skip", collection=name, reason="already in Edge")
                continue
            copied[name] = _migrate_collection(store, client, name)
    finally:
        client.close()
    backup = path / LOCAL_MODE_BACKUP
    backup.mkdir(exist_ok=True)
    for entry in ("collection", "meta.json", ".lock"):
        if (path / entry).exists():
            shutil.move(str(path / entry), str(backup / entry))
    log.info("vectors.migrate.done", copied=copied, backup=str(backup))
    return copied


def _migrate_collection(store: EdgeStore, client: Any, name: str) -> int:
    params = client.get_collection(name).config.params
    dense = params.vectors if isinstance(params.vectors, dict) else {}
    dimensions = {
        vector_name.removeprefix("dense-"): int(config.size)
        for vector_name, config in dense.items()
    }
    total = int(client.count(name, exact=True).count)
    target = store.root / name
    partial = store.root / f"{name}.migrating"
    if partial.exists():
        shutil.rmtree(partial)  # an earlier attempt was cut short
    shard = store.create_at(partial, chunk_schema(dimensions))
    done, offset, started = 0, None, time.monotonic()
    log.info("vectors.migrate.collection", collection=name, points=total)
    while True:
        records, offset = client.scroll(
            name, limit=MIGRATION_BATCH, offset=offset, with_payload=True, with_vectors=True
        )
        points = [_point(record) for record in records]
        if points:
            store.upsert_into(shard, points)
            done += len(points)
            log.info(
                "vectors.migrate.progress",
                collection=name,
                done=done,
                total=total,
                percent=round(100 * done / total, 1) if total else 100.0,
            )
        if offset is None:
            break
    shard.optimize()
    shard.flush()
    shard.close()
    partial.rename(target)
    log.info(
        "vectors.migrate.collection_done",
        collection=name,
        points=done,
        seconds=round(time.monotonic() - started, 1),
    )
    return done


def _point(record: Any) -> Point:
    vectors: dict[str, list[float] | SparseVector] = {}
    for name, vector in (record.vector or {}).items():
        if hasattr(vector, "indices"):
            vectors[name] = SparseVector(list(vector.indices), list(vector.values))
        else:
            vectors[name] = list(vector)
    return Point(uuid.UUID(str(record.id)), vectors, dict(record.payload or {}))
