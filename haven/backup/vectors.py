"""Vectors in a backup.

The embedded store (Qdrant Edge) has no call that writes a snapshot (``qdrant-edge-py`` can
unpack a server's snapshot and report its segments' manifest, not make one), and copying a
shard's files while the process writes to it is not a consistent copy. So a backup exports
the collection's points, each with its vectors and payload, page by page through the store
(``vectors/<collection>.jsonl.gz``); a restore creates the collection with the recorded
dimensions and writes them back. The same export works on a Qdrant server.

On a server, ``server_snapshots`` additionally takes the server's own collection snapshots
through ``qdrant-client`` and records the alias map, which collection snapshots do not
include. That path is written against the client's API but is untested here (the tests run
the embedded store): see the README's maintenance section.

With no vectors in a backup (``HAVEN_BACKUP_VECTORS=none`` or an export that failed), a
restore re-indexes from PostgreSQL and the objects through the normal ingest jobs.
"""

from __future__ import annotations

import gzip
import io
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from haven.index import ChunkIndex
from haven.vectorstore import Point, Schema, SparseVector, VectorStore

PAGE = 512


def vectors_path(collection: str) -> str:
    return f"vectors/{collection}.jsonl.gz"


def _line(point: Point) -> bytes:
    vectors: dict[str, Any] = {
        name: {"indices": v.indices, "values": v.values} if isinstance(v, SparseVector) else v
        for name, v in point.vectors.items()
    }
    record = {"id": str(point.id), "vectors": vectors, "payload": point.payload}
    return json.dumps(record, separators=(",", ":"), sort_keys=True, default=str).encode() + b"\n"


def _point(line: bytes) -> Point:
    record = json.loads(line)
    vectors: dict[str, list[float] | SparseVector] = {
        name: SparseVector(list(v["indices"]), list(v["values"])) if isinstance(v, dict) else v
        for name, v in record["vectors"].items()
    }
    return Point(uuid.UUID(record["id"]), vectors, dict(record["payload"]))


class ExportStream(io.RawIOBase):
    """The collection's points as a gzip'd JSON-lines stream, read page by page from the
    store as the target reads the stream."""

    def __init__(
        self, store: VectorStore, collection: str, progress: Callable[[int], None]
    ) -> None:
        self.store = store
        self.collection = collection
        self.progress = progress
        self.points = 0
        self._buffer = io.BytesIO()
        self._gzip = gzip.GzipFile(fileobj=self._buffer, mode="wb", mtime=0)
        self._pending = b""
        self._pages = self._read_pages()
        self._done = False

    def _read_pages(self) -> Iterator[list[Point]]:
        offset: uuid.UUID | None = None
        while True:
            page, offset = self.store.export_points(self.collection, offset=offset, limit=PAGE)
            if page:
                yield page
            if offset is None:
                return

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        while not self._done and (n < 0 or len(self._pending) < n):
            page = next(self._pages, None)
            if page is None:
                self._gzip.close()
                self._done = True
            else:
                for point in page:
                    self._gzip.write(_line(point))
                self.points += len(page)
                self.progress(self.points)
            self._pending += self._buffer.getvalue()
            self._buffer.seek(0)
            self._buffer.truncate()
        if n < 0:
            data, self._pending = self._pending, b""
        else:
            data, self._pending = self._pending[:n], self._pending[n:]
        return data


def points_from(chunks: Iterator[bytes]) -> Iterator[list[Point]]:
    """The points of an export, a page at a time."""
    decompressor = gzip.GzipFile(fileobj=_ChunkReader(chunks), mode="rb")
    page: list[Point] = []
    for line in decompressor:
        if line.strip():
            page.append(_point(line))
        if len(page) >= PAGE:
            yield page
            page = []
    if page:
        yield page


class _ChunkReader(io.RawIOBase):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.pending:
            chunk = next(self.chunks, None)
            if chunk is None:
                return 0
            self.pending = chunk
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n


def collection_schema(index: ChunkIndex) -> dict[str, Any]:
    """What a restore needs to create the collection again: its dense dimensions."""
    return {"dense": index.store.dimensions(index.collection)}


def create_collection(index: ChunkIndex, recorded: dict[str, Any]) -> None:
    from haven.index import FLAG_FIELDS, KEYWORD_FIELDS, SPARSE_NAME, TENANT_KEY

    index.store.create(
        index.collection,
        Schema(
            dense={name: int(dim) for name, dim in recorded["dense"].items()},
            sparse=(SPARSE_NAME,),
            tenant_key=TENANT_KEY,
            keywords=KEYWORD_FIELDS,
            flags=FLAG_FIELDS,
        ),
    )


def server_snapshots(client: Any, collections: list[str]) -> dict[str, Any]:
    """On a Qdrant server: a snapshot of each collection (kept on the server, its name
    recorded) and the alias map. Untested here: the tests run the embedded store."""
    snapshots = {}
    for name in collections:
        described = client.create_snapshot(collection_name=name, wait=True)
        snapshots[name] = getattr(described, "name", None)
    aliases = {a.alias_name: a.collection_name for a in client.get_aliases().aliases}
    return {"snapshots": snapshots, "aliases": aliases}
