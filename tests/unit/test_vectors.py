"""The embedded vector store is shared by the API thread and the worker threads."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from pathlib import Path

from qdrant_client import QdrantClient

from haven.index import IndexedChunk, SparseVector, chunk_id
from haven.settings import StoreSettings
from haven.vectors import make_index, make_qdrant


def test_concurrent_writers_on_the_embedded_store_lose_nothing(tmp_path: Path) -> None:
    settings = StoreSettings(qdrant_path=tmp_path / "q", qdrant_collection="t", env="test")
    client = make_qdrant(settings)
    assert make_qdrant(settings) is client  # one client per folder in a process
    index = make_index(settings, client)
    index.ensure({"a": 4})
    tenant = uuid.uuid4()
    errors: list[BaseException] = []

    def write(document: uuid.UUID) -> None:
        try:
            for start in range(0, 200, 20):
                index.upsert(
                    IndexedChunk(
                        chunk_id(document, 1, position),
                        {"a": [1.0, float(position), 0.5, 0.25]},
                        SparseVector([position + 1], [1.0]),
                        {"tenant_id": str(tenant), "document_id": str(document)},
                    )
                    for position in range(start, start + 20)
                )
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(uuid.uuid4(),)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert index.count(tenant) == 800


def test_embedded_store_writes_through_a_write_ahead_log_and_survives_reopening(
    tmp_path: Path,
) -> None:
    settings = StoreSettings(qdrant_path=tmp_path / "q", qdrant_collection="wal", env="test")
    index = make_index(settings, make_qdrant(settings))
    index.ensure({"a": 4})
    tenant, document = uuid.uuid4(), uuid.uuid4()
    index.upsert(
        IndexedChunk(
            chunk_id(document, 1, position),
            {"a": [1.0, float(position), 0.5, 0.25]},
            SparseVector([position + 1], [1.0]),
            {"tenant_id": str(tenant), "document_id": str(document)},
        )
        for position in range(30)
    )
    files = list((tmp_path / "q").rglob("storage.sqlite"))
    assert len(files) == 1
    with sqlite3.connect(files[0]) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    # Opened again after the process that wrote it let go (a restart), every point is there.
    make_qdrant(settings).close()
    fresh = QdrantClient(path=str(tmp_path / "q"))
    assert fresh.count("wal", exact=True).count == 30
    fresh.close()
