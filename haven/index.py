"""The chunk index in Qdrant: one collection, a named dense vector per embedding alias and a
sparse ``lexical`` vector whose IDF Qdrant computes (``Modifier.IDF``).

Every point carries its tenant, and every read or delete here filters on it. A new version's
points are written inactive and switched on only when the whole version is indexed; the old
version's points are removed after that, so search never goes empty in between and a canceled
or failed ingest leaves nothing visible.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from qdrant_client import QdrantClient, models

SPARSE_NAME = "lexical"
CHUNK_NAMESPACE = uuid.UUID("6f1d3c52-5b0e-4d8e-9a43-2f8f3c1a7b10")


def dense_name(alias: str) -> str:
    return f"dense-{alias}"


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
class SparseVector:
    indices: list[int]
    values: list[float]


@dataclass(frozen=True)
class IndexedChunk:
    id: uuid.UUID
    dense: dict[str, list[float]]  # alias -> vector
    sparse: SparseVector
    payload: dict[str, Any] = field(default_factory=dict)


def tenant_filter(tenant_id: uuid.UUID, *more: models.Condition) -> models.Filter:
    return models.Filter(
        must=[
            models.FieldCondition(key="tenant_id", match=models.MatchValue(value=str(tenant_id))),
            *more,
        ]
    )


def _match(key: str, value: str | int | bool) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


class ChunkIndex:
    def __init__(self, client: QdrantClient, collection: str, *, server: bool) -> None:
        self.client = client
        self.collection = collection
        self.server = server

    def ensure(self, dimensions: dict[str, int]) -> None:
        """Create the collection, or add the named vectors of newly active aliases."""
        dense = {
            dense_name(alias): models.VectorParams(size=dim, distance=models.Distance.COSINE)
            for alias, dim in dimensions.items()
        }
        if not self.client.collection_exists(self.collection):
            self.client.create_collection(
                self.collection,
                vectors_config=dense,
                sparse_vectors_config={
                    SPARSE_NAME: models.SparseVectorParams(modifier=models.Modifier.IDF)
                },
            )
            if self.server:  # payload indexes only exist on a server; local mode scans
                for key in ("tenant_id", "document_id", "version_id"):
                    self.client.create_payload_index(
                        self.collection,
                        key,
                        models.KeywordIndexParams(
                            type=models.KeywordIndexType.KEYWORD, is_tenant=key == "tenant_id"
                        ),
                    )
                self.client.create_payload_index(
                    self.collection, "active", models.PayloadSchemaType.BOOL
                )
            return
        info = self.client.get_collection(self.collection)
        existing = info.config.params.vectors
        names = set(existing) if isinstance(existing, dict) else set()
        missing = {name: params for name, params in dense.items() if name not in names}
        if missing:
            raise RuntimeError(
                f"collection {self.collection} lacks vectors {sorted(missing)}: re-index "
                "after an embedding model change (haven maintenance re-index)"
            )

    def existing_ids(self, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        if not ids:
            return set()
        found = self.client.retrieve(
            self.collection, [str(i) for i in ids], with_payload=False, with_vectors=False
        )
        return {uuid.UUID(str(point.id)) for point in found}

    def upsert(self, chunks: Iterable[IndexedChunk]) -> int:
        points = [
            models.PointStruct(
                id=str(chunk.id),
                vector={
                    **{dense_name(alias): vec for alias, vec in chunk.dense.items()},
                    SPARSE_NAME: models.SparseVector(
                        indices=chunk.sparse.indices, values=chunk.sparse.values
                    ),
                },
                payload={**chunk.payload, "active": False},
            )
            for chunk in chunks
        ]
        if points:
            self.client.upsert(self.collection, points=points, wait=True)
        return len(points)

    def activate_version(
        self, point_ids: Sequence[uuid.UUID], stale_ids: Sequence[uuid.UUID]
    ) -> None:
        """Make a finished version's points searchable, then drop the points of the versions
        it replaces. Addressed by id, not by filter: embedded mode answers a filter by
        scanning the whole collection, which made every activation O(collection)."""
        if point_ids:
            self.client.set_payload(
                self.collection,
                payload={"active": True},
                points=[str(i) for i in point_ids],
                wait=True,
            )
        if stale_ids:
            self.client.delete(
                self.collection,
                points_selector=models.PointIdsList(points=[str(i) for i in stale_ids]),
                wait=True,
            )

    def delete_version(self, tenant_id: uuid.UUID, version_id: uuid.UUID) -> None:
        self._delete(tenant_filter(tenant_id, _match("version_id", str(version_id))))

    def delete_document(self, tenant_id: uuid.UUID, document_id: uuid.UUID) -> None:
        self._delete(tenant_filter(tenant_id, _match("document_id", str(document_id))))

    def delete_tenant(self, tenant_id: uuid.UUID) -> int:
        """Delete every vector of a tenant; returns how many there were."""
        if not self.client.collection_exists(self.collection):
            return 0
        found = self.count(tenant_id)
        self._delete(tenant_filter(tenant_id))
        return found

    def count(self, tenant_id: uuid.UUID | None = None, *, active_only: bool = False) -> int:
        conditions: list[models.Condition] = []
        if tenant_id is not None:
            conditions.append(_match("tenant_id", str(tenant_id)))
        if active_only:
            conditions.append(_match("active", True))
        result = self.client.count(
            self.collection, count_filter=models.Filter(must=conditions), exact=True
        )
        return int(result.count)

    def _delete(self, flt: models.Filter) -> None:
        if not self.client.collection_exists(self.collection):
            return
        self.client.delete(
            self.collection, points_selector=models.FilterSelector(filter=flt), wait=True
        )
