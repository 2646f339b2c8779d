"""The vector store client: a Qdrant server when ``QDRANT_URL`` is set, otherwise
qdrant-client's embedded local mode in a folder. The same calls work on both.

Local mode allows one process per folder, which is why the embedded default runs the API and
the workers in one process (``haven up``); inside that process they share one client, and
since local mode keeps its points in plain in-memory arrays that concurrent writers corrupt,
every call to it goes through one lock.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, cast

from qdrant_client import QdrantClient

from haven.index import ChunkIndex
from haven.settings import StoreSettings

_local_clients: dict[Path, QdrantClient] = {}
_lock = threading.Lock()


class _Serialized:
    """A local-mode client whose methods run one at a time (the API thread and the worker
    threads share it)."""

    def __init__(self, client: QdrantClient) -> None:
        self._client = client
        self._call_lock = threading.RLock()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._call_lock:
                return attribute(*args, **kwargs)

        return locked


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
