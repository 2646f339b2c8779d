"""The chunk index: one collection, a named dense vector per embedding alias and a sparse
``lexical`` vector whose IDF the vector store computes (Qdrant's ``Modifier.IDF``).

Every point carries its tenant, and every read or delete here filters on it. A new version's
points are written inactive and switched on only when the whole version is indexed; the old
version's points are removed after that, so search never goes empty in between and a canceled
or failed ingest leaves nothing visible.

The index speaks to a ``haven.vectorstore.VectorStore``: a Qdrant server, or Qdrant Edge in
process (the embedded default).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from haven.tracing import span
from haven.vectorstore import Filter, Match, Point, Schema, SparseVector, VectorStore

__all__ = [
    "CHUNK_NAMESPACE",
    "SPARSE_NAME",
    "ChunkIndex",
    "IndexedChunk",
    "SparseVector",
    "chunk_id",
    "chunk_schema",
    "dense_name",
    "passage_text",
    "tenant_filter",
]

SPARSE_NAME = "lexical"
CHUNK_NAMESPACE = uuid.UUID("6f1d3c52-5b0e-4d8e-9a43-2f8f3c1a7b10")
# Payload fields searches and deletes filter on: indexed wherever the store can index.
TENANT_KEY = "tenant_id"
KEYWORD_FIELDS = ("tenant_id", "document_id", "version_id")
FLAG_FIELDS = ("active",)


def dense_name(alias: str) -> str:
    return f"dense-{alias}"


def chunk_schema(dimensions: dict[str, int]) -> Schema:
    """The collection for chunks embedded by ``dimensions`` (alias -> dimension)."""
    return Schema(
        dense={dense_name(alias): dim for alias, dim in dimensions.items()},
        sparse=(SPARSE_NAME,),
        tenant_key=TENANT_KEY,
        keywords=KEYWORD_FIELDS,
        flags=FLAG_FIELDS,
    )


def passage_text(heading: str | None, text: str) -> str:
    """What is embedded and indexed for a chunk: its section heading, then its text, so a
    passage is found by the words of the title it sits under."""
    if heading and not text.startswith(heading):
        return f"{heading}\n\n{text}"
    return text


def chunk_id(document_id: uuid.UUID, version: int, position: int) -> uuid.UUID:
    """Deterministic, so re-running a step overwrites instead of duplicating."""
    return uuid.uuid5(CHUNK_NAMESPACE, f"{document_id}:{version}:{position}")


@dataclass(frozen=True)
class IndexedChunk:
    id: uuid.UUID
    dense: dict[str, list[float]]  # alias -> vector
    sparse: SparseVector
    payload: dict[str, Any] = field(default_factory=dict)


def tenant_filter(tenant_id: uuid.UUID, *more: Match) -> Filter:
    return Filter(must=(Match(TENANT_KEY, str(tenant_id)), *more))


class ChunkIndex:
    """One collection of chunks. ``also`` names the other collections of the index (one a
    re-index is building, the one kept for a rollback): deletes reach them too, so neither
    a switch nor a rollback brings a deleted document back."""

    def __init__(self, store: VectorStore, collection: str, also: Sequence[str] = ()) -> None:
        self.store = store
        self.collection = collection
        self.also = tuple(c for c in also if c != collection)

    @property
    def server(self) -> bool:
        return self.store.kind == "server"

    def exists(self) -> bool:
        return self.store.exists(self.collection)

    def ensure(self, dimensions: dict[str, int]) -> None:
        """Create the collection, or check it has the named vectors of the active aliases."""
        schema = chunk_schema(dimensions)
        if not self.store.exists(self.collection):
            self.store.create(self.collection, schema)
            return
        missing = set(schema.dense) - self.store.dense_names(self.collection)
        if missing:
            raise RuntimeError(
                f"collection {self.collection} lacks vectors {sorted(missing)}: re-index "
                "after an embedding model change (haven maintenance re-index)"
            )

    def existing_ids(self, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        if not ids:
            return set()
        return self.store.existing_ids(self.collection, ids)

    def upsert(self, chunks: Iterable[IndexedChunk], *, keep_active: bool = False) -> int:
        """Write chunks inactive (an ingest activates a finished version later), or, with
        ``keep_active``, with the ``active`` flag their payload carries (a re-index copying
        the live collection's chunks)."""
        points = [
            Point(
                id=chunk.id,
                vectors={
                    **{dense_name(alias): vec for alias, vec in chunk.dense.items()},
                    SPARSE_NAME: chunk.sparse,
                },
                payload={
                    **chunk.payload,
                    "active": bool(chunk.payload.get("active")) if keep_active else False,
                },
            )
            for chunk in chunks
        ]
        if points:
            with span("qdrant.upsert", points=len(points)):
                self.store.upsert(self.collection, points)
        return len(points)

    def activate_version(
        self, point_ids: Sequence[uuid.UUID], stale_ids: Sequence[uuid.UUID]
    ) -> None:
        """Make a finished version's points searchable, then drop the points of the versions
        it replaces. Addressed by id, not by filter: a store without payload indexes answers
        a filter by scanning the whole collection."""
        if point_ids:
            self.store.set_payload(self.collection, point_ids, {"active": True})
        if stale_ids:
            self.store.delete_ids(self.collection, stale_ids)

    def delete_version(self, tenant_id: uuid.UUID, version_id: uuid.UUID) -> None:
        self._delete(tenant_filter(tenant_id, Match("version_id", str(version_id))))

    def delete_document(self, tenant_id: uuid.UUID, document_id: uuid.UUID) -> None:
        self._delete(tenant_filter(tenant_id, Match("document_id", str(document_id))))

    def delete_tenant(self, tenant_id: uuid.UUID) -> int:
        """Every point of the tenant, in every document and version (a tenant purge);
        returns how many there were."""
        found = self.count(tenant_id)
        self._delete(tenant_filter(tenant_id))
        return found

    def payloads(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
        """The payloads of these points that exist (a re-index reads the chunks' text)."""
        if not ids or not self.store.exists(self.collection):
            return {}
        return self.store.payloads(self.collection, ids)

    def drop(self) -> bool:
        """Remove the whole collection (a canceled build, an expired previous index)."""
        if not self.store.exists(self.collection):
            return False
        self.store.drop(self.collection)
        return True

    def count(self, tenant_id: uuid.UUID | None = None, *, active_only: bool = False) -> int:
        if not self.store.exists(self.collection):
            return 0
        conditions: list[Match] = []
        if tenant_id is not None:
            conditions.append(Match(TENANT_KEY, str(tenant_id)))
        if active_only:
            conditions.append(Match("active", True))
        return self.store.count(self.collection, Filter(must=tuple(conditions)))

    def points(self, batch: int = 256) -> Iterator[list[tuple[uuid.UUID, dict[str, Any]]]]:
        """Every point's id and payload, a page at a time (maintenance)."""
        if not self.store.exists(self.collection):
            return
        offset: uuid.UUID | None = None
        while True:
            page, offset = self.store.scroll(self.collection, offset=offset, limit=batch)
            if page:
                yield page
            if offset is None:
                return

    def set_lexical(
        self, updates: Sequence[tuple[uuid.UUID, SparseVector, dict[str, Any]]]
    ) -> None:
        """Replace points' lexical vectors and set payload fields of each (maintenance: a
        new analyzer); their dense vectors are left as they are."""
        if not updates:
            return
        self.store.update_sparse(self.collection, SPARSE_NAME, [(i, v) for i, v, _ in updates])
        groups: dict[tuple[tuple[str, Any], ...], list[uuid.UUID]] = {}
        for point_id, _, fields in updates:
            groups.setdefault(tuple(sorted(fields.items())), []).append(point_id)
        for fields_key, ids in groups.items():
            self.store.set_payload(self.collection, ids, dict(fields_key))

    def _delete(self, flt: Filter) -> None:
        for collection in (self.collection, *self.also):
            if self.store.exists(collection):
                self.store.delete_where(collection, flt)
