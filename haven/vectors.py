"""The vector store client: a Qdrant server when ``QDRANT_URL`` is set, otherwise
qdrant-client's embedded local mode in a folder. The same calls work on both.

Local mode allows one process per folder, which is why the embedded default runs the API and
the workers in one process (``haven up``); inside that process they share one client, and
since local mode keeps its points in plain in-memory arrays that concurrent writers corrupt,
every call to it goes through one lock.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any, cast

import structlog
from qdrant_client import QdrantClient

from haven.index import ChunkIndex
from haven.settings import StoreSettings

log = structlog.get_logger("haven.vectors")

_local_clients: dict[Path, QdrantClient] = {}
_lock = threading.Lock()


class _Serialized:
    """A local-mode client whose methods run one at a time (the API thread and the worker
    threads share it)."""

    def __init__(self, client: QdrantClient) -> None:
        self._client = client
        self._call_lock = threading.RLock()
        tune_local_storage(client)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._call_lock:
                result = attribute(*args, **kwargs)
                if name in ("create_collection", "recreate_collection"):
                    tune_local_storage(self._client)
                return result

        return locked


def tune_local_storage(client: QdrantClient) -> None:
    """Write-ahead logging for local mode's per-collection SQLite files.

    Local mode stores every point with its own commit, and in SQLite's default journal mode
    each commit syncs the file to disk twice: indexing a document's chunks and then making
    them searchable spent most of an ingest job's time waiting for the disk. In WAL mode with
    ``synchronous=NORMAL`` a commit is an append; the database stays consistent after a crash
    of the process, and an operating-system crash can at worst lose the last commits, which
    the vectors' source of truth (PostgreSQL + the object store) can rebuild. Reaches into
    qdrant-client's local internals; if they change, nothing is tuned and nothing breaks."""
    local = getattr(client, "_client", None)
    for collection in getattr(local, "collections", {}).values():
        storage = getattr(getattr(collection, "storage", None), "storage", None)
        if not isinstance(storage, sqlite3.Connection):
            continue
        try:
            if storage.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                storage.execute("PRAGMA journal_mode=WAL")
            storage.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            log.warning("vectors.local_tuning_failed", error=str(exc))


def make_qdrant(settings: StoreSettings) -> QdrantClient:
    if settings.qdrant_url:
        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return QdrantClient(url=settings.qdrant_url, api_key=api_key, timeout=30)
    path = settings.qdrant_path.resolve()
    with _lock:
        client = _local_clients.get(path)
        if client is None:
            path.mkdir(parents=True, exist_ok=True)
            client = cast(QdrantClient, _Serialized(QdrantClient(path=str(path))))
            _local_clients[path] = client
        return client


def release_qdrant(settings: StoreSettings, client: QdrantClient) -> None:
    """Close a server client; a local one stays open for the process's other users."""
    if settings.qdrant_url:
        client.close()


def make_index(settings: StoreSettings, client: QdrantClient) -> ChunkIndex:
    return ChunkIndex(client, settings.qdrant_collection, server=settings.qdrant_url is not None)
