"""The embedded vector store (Qdrant Edge): shared by the API thread and the worker threads,
durable once a write returns, and carrying over the data of the earlier embedded default."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

from qdrant_client import QdrantClient

from haven.index import ChunkIndex, IndexedChunk, SparseVector, chunk_id
from haven.search import QueryVectors, SearchParams, search
from haven.settings import StoreSettings
from haven.vectors import LOCAL_MODE_BACKUP, close_embedded, make_index, make_qdrant
from haven.vectorstore import ServerStore


def chunk(tenant: uuid.UUID, document: uuid.UUID, position: int, version: int = 1) -> IndexedChunk:
    return IndexedChunk(
        chunk_id(document, version, position),
        {"a": [1.0, float(position), 0.5, 0.25]},
        SparseVector([position + 1], [1.0]),
        {"tenant_id": str(tenant), "document_id": str(document), "text": f"passage {position}"},
    )


def test_concurrent_writers_on_the_embedded_store_lose_nothing(tmp_path: Path) -> None:
    settings = StoreSettings(qdrant_path=tmp_path / "q", qdrant_collection="t", env="test")
    store = make_qdrant(settings)
    assert make_qdrant(settings) is store  # one store per folder in a process
    assert store.kind == "edge"
    index = make_index(settings, store)
    index.ensure({"a": 4})
    tenant = uuid.uuid4()
    errors: list[BaseException] = []

    def write(document: uuid.UUID) -> None:
        try:
            for start in range(0, 200, 20):
                index.upsert(chunk(tenant, document, p) for p in range(start, start + 20))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(uuid.uuid4(),)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert index.count(tenant) == 800
    close_embedded(settings)


WRITER = textwrap.dedent(
    """
    import sys, time, uuid
    from pathlib import Path
    from haven.index import IndexedChunk, SparseVector, chunk_id
    from haven.settings import StoreSettings
    from haven.vectors import make_index, make_qdrant

    settings = StoreSettings(qdrant_path=Path(sys.argv[1]), qdrant_collection="wal", env="test")
    index = make_index(settings, make_qdrant(settings))
    index.ensure({"a": 4})
    tenant, document = uuid.UUID(sys.argv[2]), uuid.uuid4()
    ids = [chunk_id(document, 1, p) for p in range(30)]
    index.upsert(
        IndexedChunk(i, {"a": [1.0, float(p), 0.5, 0.25]}, SparseVector([p + 1], [1.0]),
                     {"tenant_id": str(tenant), "document_id": str(document)})
        for p, i in enumerate(ids)
    )
    index.activate_version(ids, [])
    print("acknowledged", flush=True)
    time.sleep(600)
    """
)


def test_an_acknowledged_write_survives_kill_9_of_the_process(tmp_path: Path) -> None:
    tenant = uuid.uuid4()
    with subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path / "q"), str(tenant)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    ) as writer:
        assert writer.stdout is not None
        try:
            assert writer.stdout.readline().strip() == "acknowledged"
        finally:
            writer.send_signal(signal.SIGKILL)  # no flush, no close: only the write-ahead log
            writer.wait()

    settings = StoreSettings(qdrant_path=tmp_path / "q", qdrant_collection="wal", env="test")
    index = make_index(settings, make_qdrant(settings))
    assert index.count(tenant) == 30
    assert index.count(tenant, active_only=True) == 30  # the activation too
    close_embedded(settings)


def local_mode_folder(path: Path, tenants: list[uuid.UUID]) -> list[uuid.UUID]:
    """A folder as the embedded default of earlier releases (qdrant-client's local mode)
    left it: per tenant one active document of 3 chunks and one inactive chunk."""
    client = QdrantClient(path=str(path))
    index = ChunkIndex(ServerStore(client, kind="local"), "haven_chunks")
    index.ensure({"a": 4})
    documents = []
    for tenant in tenants:
        document = uuid.uuid4()
        documents.append(document)
        index.upsert(chunk(tenant, document, p) for p in range(3))
        index.activate_version([chunk_id(document, 1, p) for p in range(3)], [])
        index.upsert([chunk(tenant, document, 0, version=2)])  # an ingest in progress
    client.close()
    return documents


def test_local_mode_data_is_carried_over_to_edge_on_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "q"
    tenants = [uuid.uuid4(), uuid.uuid4()]
    documents = local_mode_folder(path, tenants)
    # A migration cut short earlier left a partial copy: it is started over, not trusted.
    (path / "edge" / "haven_chunks.migrating").mkdir(parents=True)
    (path / "edge" / "haven_chunks.migrating" / "junk").write_text("partial")

    settings = StoreSettings(qdrant_path=path, qdrant_collection="haven_chunks", env="test")
    index = make_index(settings, make_qdrant(settings))
    for tenant, document in zip(tenants, documents, strict=True):
        assert index.count(tenant) == 4
        assert index.count(tenant, active_only=True) == 3
        outcome = search(
            index,
            tenant,
            QueryVectors("a", [1.0, 2.0, 0.5, 0.25], SparseVector([3], [1.0])),
            SearchParams(mode="hybrid"),
        )
        assert outcome.hits[0].chunk_id == chunk_id(document, 1, 2)
        assert {h.payload["document_id"] for h in outcome.hits} == {str(document)}
        assert len(outcome.hits) == 3  # the inactive chunk stays invisible
    index.ensure({"a": 4})  # the migrated collection is Haven's, with its vectors
    # The old files are kept aside, not deleted; the folder no longer looks like local mode.
    assert not (path / "meta.json").exists()
    backup = json.loads((path / LOCAL_MODE_BACKUP / "meta.json").read_text())
    assert "haven_chunks" in backup["collections"]
    assert not (path / "edge" / "haven_chunks.migrating").exists()
    close_embedded(settings)

    # Opened again, nothing is migrated twice.
    index = make_index(settings, make_qdrant(settings))
    assert index.count(tenants[0]) == 4
    close_embedded(settings)


def test_a_second_process_gets_a_clear_error_while_the_store_is_open(tmp_path: Path) -> None:
    settings = StoreSettings(qdrant_path=tmp_path / "q", qdrant_collection="t", env="test")
    make_index(settings, make_qdrant(settings)).ensure({"a": 4})
    code = textwrap.dedent(
        f"""
        from pathlib import Path
        from haven.settings import StoreSettings
        from haven.vectors import make_index, make_qdrant
        s = StoreSettings(qdrant_path=Path({str(tmp_path / "q")!r}), qdrant_collection="t")
        make_index(s, make_qdrant(s)).count()
        """
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert other.returncode != 0
    assert "open in another process" in other.stderr
    close_embedded(settings)
