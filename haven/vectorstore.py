"""The vector store under the chunk index: one interface, two engines.

- ``ServerStore``: a Qdrant server through ``qdrant-client`` (production). Its translation is
  the one Haven always sent; qdrant-client's pure-Python local mode speaks the same API, which
  is how the tests exercise this path without a server, and how ``bench/retrieval`` compares.
- ``EdgeStore``: Qdrant Edge (``qdrant-edge-py``), Qdrant's own engine in-process, the
  embedded default when ``QDRANT_URL`` is unset: HNSW, sparse vectors with IDF, payload
  indexes, a write-ahead log. One shard per collection, in ``<path>/edge/<collection>``.

Callers describe points, filters and queries with the plain types below; each store turns
them into its engine's requests. Nothing above this module imports an engine.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import qdrant_edge as edge
import structlog

log = structlog.get_logger("haven.vectorstore")

Payload = dict[str, Any]


@dataclass(frozen=True)
class SparseVector:
    indices: list[int]
    values: list[float]


# -- filters ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    key: str
    value: str | int | bool


@dataclass(frozen=True)
class MatchAny:
    key: str
    values: list[str]


@dataclass(frozen=True)
class DatetimeRange:
    key: str
    gte: datetime | None = None
    lte: datetime | None = None


Condition = Match | MatchAny | DatetimeRange


@dataclass(frozen=True)
class Filter:
    must: tuple[Condition, ...] = ()


# -- queries ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Nearest:
    """Nearest neighbours of a dense or sparse vector in the named vector ``using``."""

    vector: list[float] | SparseVector
    using: str


@dataclass(frozen=True)
class Fuse:
    """Fuse the prefetches' rankings: Reciprocal Rank Fusion (optionally weighted, one weight
    per prefetch) or score-normalised DBSF.

    A weight divides the rank, it does not multiply the term: 1 / (k + (rank + 1) / w - 1)
    with ranks from 0, on Edge 0.9.0 (measured) as in qdrant-client's fusion; a heavy weight
    therefore moves a hit only a few places. Nothing in Haven weighs channels yet."""

    method: Literal["rrf", "dbsf"] = "rrf"
    k: int = 60
    weights: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Diversify:
    """Maximal Marginal Relevance over the candidates, by the dense vector ``using``;
    ``relevance`` is MMR's lambda (1 = relevance only, 0 = diversity only)."""

    vector: list[float]
    using: str
    relevance: float
    candidates: int


Query = Nearest | Fuse | Diversify


@dataclass(frozen=True)
class Prefetch:
    query: Query
    limit: int
    filter: Filter | None = None
    prefetch: tuple[Prefetch, ...] = ()


@dataclass(frozen=True)
class Request:
    query: Query
    limit: int
    filter: Filter | None = None
    prefetch: tuple[Prefetch, ...] = ()
    with_payload: bool = False


@dataclass(frozen=True)
class Scored:
    id: uuid.UUID
    score: float
    payload: Payload


@dataclass(frozen=True)
class Point:
    id: uuid.UUID
    vectors: dict[str, list[float] | SparseVector]
    payload: Payload


@dataclass(frozen=True)
class Schema:
    """What a collection holds: dense vectors (name -> dimension, cosine), sparse vectors
    weighted by IDF, and the payload fields filtered on (indexed)."""

    dense: dict[str, int]
    sparse: tuple[str, ...] = ()
    tenant_key: str | None = None
    keywords: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()  # booleans


class VectorStore(Protocol):
    """What the chunk index needs from a vector store."""

    kind: str  # "server", "local" (qdrant-client local mode) or "edge"

    def exists(self, collection: str) -> bool: ...

    def create(self, collection: str, schema: Schema) -> None: ...

    def dense_names(self, collection: str) -> set[str]: ...

    def existing_ids(self, collection: str, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]: ...

    def upsert(self, collection: str, points: Sequence[Point]) -> None: ...

    def set_payload(self, collection: str, ids: Sequence[uuid.UUID], payload: Payload) -> None: ...

    def delete_ids(self, collection: str, ids: Sequence[uuid.UUID]) -> None: ...

    def delete_where(self, collection: str, flt: Filter) -> None: ...

    def count(self, collection: str, flt: Filter) -> int: ...

    def payloads(self, collection: str, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Payload]:
        """The payloads of those of ``ids`` that exist."""
        ...

    def drop(self, collection: str) -> None:
        """Remove the collection and its points."""
        ...

    def scroll(
        self, collection: str, *, offset: uuid.UUID | None, limit: int
    ) -> tuple[list[tuple[uuid.UUID, Payload]], uuid.UUID | None]:
        """A page of points (id, payload) in id order from ``offset``; the next offset."""
        ...

    def update_sparse(
        self, collection: str, name: str, vectors: Sequence[tuple[uuid.UUID, SparseVector]]
    ) -> None:
        """Replace the sparse vector ``name`` of existing points; their other vectors stay."""
        ...

    def query_batch(self, collection: str, requests: Sequence[Request]) -> list[list[Scored]]: ...

    # -- backups (haven.backup): every point with its vectors, and the dense dimensions --
    def export_points(
        self, collection: str, *, offset: uuid.UUID | None, limit: int
    ) -> tuple[list[Point], uuid.UUID | None]: ...

    def dimensions(self, collection: str) -> dict[str, int]: ...

    def check(self) -> None:
        """Raise if the store cannot answer (readiness)."""

    def close(self) -> None: ...


# -- qdrant-client (server, and local mode for tests and benchmarks) ---------------------------


class ServerStore:
    """A Qdrant server (or qdrant-client's local mode) through ``qdrant-client``."""

    def __init__(self, client: Any, *, kind: str = "server") -> None:
        self.client = client
        self.kind = kind

    def exists(self, collection: str) -> bool:
        return bool(self.client.collection_exists(collection))

    def create(self, collection: str, schema: Schema) -> None:
        from qdrant_client import models

        self.client.create_collection(
            collection,
            vectors_config={
                name: models.VectorParams(size=dim, distance=models.Distance.COSINE)
                for name, dim in schema.dense.items()
            },
            sparse_vectors_config={
                name: models.SparseVectorParams(modifier=models.Modifier.IDF)
                for name in schema.sparse
            },
        )
        if self.kind != "server":  # payload indexes only exist on a server; local mode scans
            return
        for key in schema.keywords:
            self.client.create_payload_index(
                collection,
                key,
                models.KeywordIndexParams(
                    type=models.KeywordIndexType.KEYWORD, is_tenant=key == schema.tenant_key
                ),
            )
        for key in schema.flags:
            self.client.create_payload_index(collection, key, models.PayloadSchemaType.BOOL)

    def dense_names(self, collection: str) -> set[str]:
        existing = self.client.get_collection(collection).config.params.vectors
        return set(existing) if isinstance(existing, dict) else set()

    def existing_ids(self, collection: str, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        found = self.client.retrieve(
            collection, [str(i) for i in ids], with_payload=False, with_vectors=False
        )
        return {uuid.UUID(str(point.id)) for point in found}

    def upsert(self, collection: str, points: Sequence[Point]) -> None:
        from qdrant_client import models

        self.client.upsert(
            collection,
            points=[
                models.PointStruct(
                    id=str(point.id),
                    vector={
                        name: models.SparseVector(indices=v.indices, values=v.values)
                        if isinstance(v, SparseVector)
                        else v
                        for name, v in point.vectors.items()
                    },
                    payload=point.payload,
                )
                for point in points
            ],
            wait=True,
        )

    def set_payload(self, collection: str, ids: Sequence[uuid.UUID], payload: Payload) -> None:
        self.client.set_payload(
            collection, payload=payload, points=[str(i) for i in ids], wait=True
        )

    def delete_ids(self, collection: str, ids: Sequence[uuid.UUID]) -> None:
        from qdrant_client import models

        self.client.delete(
            collection,
            points_selector=models.PointIdsList(points=[str(i) for i in ids]),
            wait=True,
        )

    def delete_where(self, collection: str, flt: Filter) -> None:
        from qdrant_client import models

        self.client.delete(
            collection,
            points_selector=models.FilterSelector(filter=self._filter(flt)),
            wait=True,
        )

    def count(self, collection: str, flt: Filter) -> int:
        return int(self.client.count(collection, count_filter=self._filter(flt), exact=True).count)

    def payloads(self, collection: str, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Payload]:
        found = self.client.retrieve(
            collection, [str(i) for i in ids], with_payload=True, with_vectors=False
        )
        return {uuid.UUID(str(point.id)): dict(point.payload or {}) for point in found}

    def drop(self, collection: str) -> None:
        self.client.delete_collection(collection)

    def scroll(
        self, collection: str, *, offset: uuid.UUID | None, limit: int
    ) -> tuple[list[tuple[uuid.UUID, Payload]], uuid.UUID | None]:
        records, following = self.client.scroll(
            collection,
            limit=limit,
            offset=str(offset) if offset else None,
            with_payload=True,
            with_vectors=False,
        )
        return (
            [(uuid.UUID(str(r.id)), dict(r.payload or {})) for r in records],
            uuid.UUID(str(following)) if following is not None else None,
        )

    def export_points(
        self, collection: str, *, offset: uuid.UUID | None, limit: int
    ) -> tuple[list[Point], uuid.UUID | None]:
        records, following = self.client.scroll(
            collection,
            limit=limit,
            offset=str(offset) if offset else None,
            with_payload=True,
            with_vectors=True,
        )
        return (
            [_exported(r.id, r.vector, r.payload) for r in records],
            uuid.UUID(str(following)) if following is not None else None,
        )

    def dimensions(self, collection: str) -> dict[str, int]:
        existing = self.client.get_collection(collection).config.params.vectors
        if not isinstance(existing, dict):
            return {}
        return {name: int(params.size) for name, params in existing.items()}

    def update_sparse(
        self, collection: str, name: str, vectors: Sequence[tuple[uuid.UUID, SparseVector]]
    ) -> None:
        from qdrant_client import models

        self.client.update_vectors(
            collection,
            points=[
                models.PointVectors(
                    id=str(point_id),
                    vector={name: models.SparseVector(indices=v.indices, values=v.values)},
                )
                for point_id, v in vectors
            ],
            wait=True,
        )

    def query_batch(self, collection: str, requests: Sequence[Request]) -> list[list[Scored]]:
        from qdrant_client import models

        built = []
        for request in requests:
            query, using = self._query(request.query)
            built.append(
                models.QueryRequest(
                    query=query,
                    using=using,
                    prefetch=[self._prefetch(p) for p in request.prefetch] or None,
                    filter=self._filter(request.filter),
                    limit=request.limit,
                    with_payload=request.with_payload,
                )
            )
        responses = self.client.query_batch_points(collection, built)
        return [
            [
                Scored(uuid.UUID(str(p.id)), float(p.score), dict(p.payload or {}))
                for p in response.points
            ]
            for response in responses
        ]

    def check(self) -> None:
        self.client.get_collections()

    def close(self) -> None:
        self.client.close()

    def _prefetch(self, prefetch: Prefetch) -> Any:
        from qdrant_client import models

        query, using = self._query(prefetch.query)
        return models.Prefetch(
            query=query,
            using=using,
            prefetch=[self._prefetch(p) for p in prefetch.prefetch] or None,
            filter=self._filter(prefetch.filter),
            limit=prefetch.limit,
        )

    @staticmethod
    def _query(query: Query) -> tuple[Any, str | None]:
        from qdrant_client import models

        if isinstance(query, Nearest):
            if isinstance(query.vector, SparseVector):
                sparse = models.SparseVector(
                    indices=query.vector.indices, values=query.vector.values
                )
                return sparse, query.using
            return query.vector, query.using
        if isinstance(query, Diversify):
            mmr = models.Mmr(diversity=1.0 - query.relevance, candidates_limit=query.candidates)
            return models.NearestQuery(nearest=query.vector, mmr=mmr), query.using
        if query.method == "dbsf":
            return models.FusionQuery(fusion=models.Fusion.DBSF), None
        weights = list(query.weights) if query.weights else None
        return models.RrfQuery(rrf=models.Rrf(k=query.k, weights=weights)), None

    @staticmethod
    def _filter(flt: Filter | None) -> Any:
        from qdrant_client import models

        if flt is None:
            return None
        must: list[models.Condition] = []
        for c in flt.must:
            if isinstance(c, Match):
                must.append(
                    models.FieldCondition(key=c.key, match=models.MatchValue(value=c.value))
                )
            elif isinstance(c, MatchAny):
                must.append(models.FieldCondition(key=c.key, match=models.MatchAny(any=c.values)))
            else:
                must.append(
                    models.FieldCondition(
                        key=c.key, range=models.DatetimeRange(gte=c.gte, lte=c.lte)
                    )
                )
        return models.Filter(must=must)


# -- Qdrant Edge (the embedded default) --------------------------------------------------------

# HNSW as the server's defaults (m 16, ef_construct 100); searched with ef 128 (never below
# the request's limit, which Qdrant raises it to anyway). Measured on SciFact in
# bench/RESULTS.md: nDCG@10 and Recall@100 within 0.002 of exact search.
HNSW_M = 16
HNSW_EF_CONSTRUCT = 100
HNSW_EF = 128
# A segment is HNSW-indexed once it holds this many kilobytes of vectors (the server's
# default; ~6,500 384-d vectors). An exact scan of a 10,000-chunk segment costs ~8 ms of CPU
# per dense channel at the API's 100 candidates, above the hybrid goal of 10 ms
# (bench/RESULTS.md); smaller segments stay unindexed and are scanned.
INDEXING_THRESHOLD_KB = 10_000
# Segments the optimiser keeps: few, as searches run on at most two cores here.
SEGMENTS = 2
# Written points after which the maintenance thread runs the optimiser, once the store has
# had no call for IDLE_SECONDS: qdrant-edge-py 0.9.0 holds Python's GIL while it optimises,
# which pauses every other thread of the process (1-1.5 s per 1,000 new chunks measured, far
# more when the machine is busy). An ingest pauses between its writes while chunks are
# embedded, hence a long idle time; past FORCE_AFTER_POINTS it runs anyway, as scanning the
# unindexed points would otherwise make every search slower.
OPTIMIZE_AFTER_POINTS = 5_000
IDLE_SECONDS = 30.0
FORCE_AFTER_POINTS = 50_000
# How often the maintenance thread flushes written segments to disk (the server's
# flush_interval_sec default). Every update is in the write-ahead log before it returns;
# the flush is what makes it survive an operating-system crash, not only a killed process.
FLUSH_SECONDS = 5.0


class StoreLocked(RuntimeError):
    """Another process has the embedded store open."""


class EdgeStore:
    """Qdrant Edge shards in ``<path>/edge/<collection>``, shared by the threads of one process.

    Edge allows one process per shard (it locks the write-ahead log), as local mode did; the
    embedded default runs the API and the workers in one process for that reason.
    """

    kind = "edge"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.root = path / "edge"
        self.root.mkdir(parents=True, exist_ok=True)
        self._shards: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._written = 0  # points written since the last optimisation
        self._dirty = False
        self._last_use = time.monotonic()
        self._stop = threading.Event()
        self._maintainer: threading.Thread | None = None

    # -- shards --

    def _shard(self, collection: str) -> Any:
        shard = self._shards.get(collection)
        if shard is not None:
            return shard
        with self._lock:
            shard = self._shards.get(collection)
            if shard is None:
                folder = self.root / collection
                if not folder.exists():
                    raise KeyError(collection)
                shard = self._load(folder)
                self._shards[collection] = shard
                self._start_maintainer()
            return shard

    def _load(self, folder: Path) -> Any:
        try:
            return edge.EdgeShard.load(str(folder))
        except Exception as exc:
            if "WAL" in str(exc) and "WouldBlock" in str(exc):
                raise StoreLocked(
                    f"the embedded vector store {folder} is open in another process: stop "
                    "Haven first, or run Haven with a Qdrant server (QDRANT_URL)"
                ) from exc
            raise

    def edge_config(self, schema: Schema) -> Any:
        return edge.EdgeConfig(
            vectors={
                name: edge.EdgeVectorParams(size=dim, distance=edge.Distance.Cosine)
                for name, dim in schema.dense.items()
            },
            sparse_vectors={
                name: edge.EdgeSparseVectorParams(modifier=edge.Modifier.Idf)
                for name in schema.sparse
            },
            hnsw_config=edge.HnswIndexConfig(
                m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT, full_scan_threshold=10_000
            ),
            optimizers=edge.EdgeOptimizersConfig(
                indexing_threshold=INDEXING_THRESHOLD_KB, default_segment_number=SEGMENTS
            ),
            wal_enabled=True,
        )

    def create_at(self, folder: Path, schema: Schema) -> Any:
        """A new shard in ``folder`` with the schema's vectors and payload indexes."""
        shard = edge.EdgeShard.create(str(folder), self.edge_config(schema))
        for key in schema.keywords:
            params = edge.KeywordIndexParams(is_tenant=key == schema.tenant_key)
            shard.update(edge.UpdateOperation.create_field_index(key, params))
        for key in schema.flags:  # stored as 0/1, see _payload
            flag = edge.IntegerIndexParams(lookup=True, range=False)
            shard.update(edge.UpdateOperation.create_field_index(key, flag))
        return shard

    def exists(self, collection: str) -> bool:
        return collection in self._shards or (self.root / collection).is_dir()

    def create(self, collection: str, schema: Schema) -> None:
        with self._lock:
            if self.exists(collection):
                return
            self._shards[collection] = self.create_at(self.root / collection, schema)
            self._start_maintainer()

    def dense_names(self, collection: str) -> set[str]:
        # The payload schema is public in ShardInfo; the vector names are not, so they are
        # read back from the shard's stored configuration.
        import json

        config = json.loads((self.root / collection / "edge_config.json").read_text())
        return set(config.get("vectors", {}))

    # -- writes --

    def _written_now(self, points: int) -> None:
        self._written += points
        self._dirty = True
        self._last_use = time.monotonic()

    def existing_ids(self, collection: str, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        if not self.exists(collection):
            return set()
        found = self._shard(collection).retrieve(
            [str(i) for i in ids], with_payload=False, with_vector=False
        )
        return {uuid.UUID(str(record.id)) for record in found}

    def edge_points(self, points: Sequence[Point]) -> list[Any]:
        return [
            edge.Point(
                str(point.id),
                {
                    name: edge.SparseVector(v.indices, v.values)
                    if isinstance(v, SparseVector)
                    else v
                    for name, v in point.vectors.items()
                },
                _payload(point.payload),
            )
            for point in points
        ]

    def upsert_into(self, shard: Any, points: Sequence[Point]) -> None:
        shard.update(edge.UpdateOperation.upsert_points(self.edge_points(points)))

    def upsert(self, collection: str, points: Sequence[Point]) -> None:
        self.upsert_into(self._shard(collection), points)
        self._written_now(len(points))

    def set_payload(self, collection: str, ids: Sequence[uuid.UUID], payload: Payload) -> None:
        self._shard(collection).update(
            edge.UpdateOperation.set_payload([str(i) for i in ids], _payload(payload))
        )
        self._written_now(0)

    def delete_ids(self, collection: str, ids: Sequence[uuid.UUID]) -> None:
        self._shard(collection).update(edge.UpdateOperation.delete_points([str(i) for i in ids]))
        self._written_now(len(ids))

    def delete_where(self, collection: str, flt: Filter) -> None:
        self._shard(collection).update(
            edge.UpdateOperation.delete_points_by_filter(self._filter(flt))
        )
        self._written_now(1)

    def drop(self, collection: str) -> None:
        import shutil

        with self._lock:
            shard = self._shards.pop(collection, None)
            if shard is not None:
                shard.close()
            shutil.rmtree(self.root / collection, ignore_errors=True)

    # -- reads --

    def payloads(self, collection: str, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Payload]:
        if not self.exists(collection):
            return {}
        found = self._shard(collection).retrieve(
            [str(i) for i in ids], with_payload=True, with_vector=False
        )
        return {uuid.UUID(str(r.id)): _unflag(dict(r.payload or {})) for r in found}

    def count(self, collection: str, flt: Filter) -> int:
        if not self.exists(collection):
            return 0
        return int(
            self._shard(collection).count(edge.CountRequest(exact=True, filter=self._filter(flt)))
        )

    def scroll(
        self, collection: str, *, offset: uuid.UUID | None, limit: int
    ) -> tuple[list[tuple[uuid.UUID, Payload]], uuid.UUID | None]:
        records, following = self._shard(collection).scroll(
            edge.ScrollRequest(
                offset=str(offset) if offset else None,
                limit=limit,
                with_payload=True,
                with_vector=False,
            )
        )
        return (
            [(uuid.UUID(str(r.id)), dict(r.payload or {})) for r in records],
            uuid.UUID(str(following)) if following is not None else None,
        )

    def export_points(
        self, collection: str, *, offset: uuid.UUID | None, limit: int
    ) -> tuple[list[Point], uuid.UUID | None]:
        records, following = self._shard(collection).scroll(
            edge.ScrollRequest(
                offset=str(offset) if offset else None,
                limit=limit,
                with_payload=True,
                with_vector=True,
            )
        )
        return (
            [_exported(r.id, r.vector, r.payload) for r in records],
            uuid.UUID(str(following)) if following is not None else None,
        )

    def dimensions(self, collection: str) -> dict[str, int]:
        import json

        config = json.loads((self.root / collection / "edge_config.json").read_text())
        return {name: int(params["size"]) for name, params in config.get("vectors", {}).items()}

    def update_sparse(
        self, collection: str, name: str, vectors: Sequence[tuple[uuid.UUID, SparseVector]]
    ) -> None:
        self._shard(collection).update(
            edge.UpdateOperation.update_vectors(
                [
                    edge.PointVectors(str(point_id), {name: edge.SparseVector(v.indices, v.values)})
                    for point_id, v in vectors
                ]
            )
        )
        self._written_now(len(vectors))

    def query_batch(self, collection: str, requests: Sequence[Request]) -> list[list[Scored]]:
        self._last_use = time.monotonic()
        built = [
            edge.QueryRequest(
                limit=r.limit,
                query=self._query(r.query),
                prefetches=[self._prefetch(p) for p in r.prefetch] or None,
                filter=self._filter(r.filter) if r.filter else None,
                with_payload=r.with_payload,
                params=edge.SearchParams(hnsw_ef=max(HNSW_EF, r.limit)),
            )
            for r in requests
        ]
        shard = self._shard(collection)
        results = (
            [shard.query(built[0])]
            if len(built) == 1
            else shard.query_batch(edge.QueryBatchRequest(built))
        )
        return [
            [Scored(uuid.UUID(str(p.id)), float(p.score), dict(p.payload or {})) for p in points]
            for points in results
        ]

    def check(self) -> None:
        for collection in list(self._shards):
            self._shard(collection).info()

    def segments(self, collection: str) -> dict[str, int]:
        """How the collection is stored now: segments, points, and how many vectors are in
        an HNSW index (the rest are searched by an exact scan)."""
        info = self._shard(collection).info()
        return {
            key: int(getattr(info, key))
            for key in ("segments_count", "points_count", "indexed_vectors_count")
        }

    # -- upkeep --

    def flush(self) -> None:
        for shard in list(self._shards.values()):
            shard.flush()

    def optimize(self) -> bool:
        """Build the HNSW indexes of grown segments, merge small ones, drop deleted points.
        Blocks the whole process while it runs (see OPTIMIZE_AFTER_POINTS)."""
        changed = False
        for collection, shard in list(self._shards.items()):
            started = time.perf_counter()
            if shard.optimize():
                changed = True
                log.info(
                    "vectors.edge.optimized",
                    collection=collection,
                    seconds=round(time.perf_counter() - started, 2),
                )
        self._written = 0
        return changed

    def _start_maintainer(self) -> None:
        if self._maintainer is None:
            self._maintainer = threading.Thread(
                target=self._maintain, name="edge-maintenance", daemon=True
            )
            self._maintainer.start()

    def _maintain(self) -> None:
        while not self._stop.wait(FLUSH_SECONDS):
            try:
                if self._dirty:
                    self._dirty = False
                    self.flush()
                idle = time.monotonic() - self._last_use >= IDLE_SECONDS
                if (idle and self._written >= OPTIMIZE_AFTER_POINTS) or (
                    self._written >= FORCE_AFTER_POINTS
                ):
                    self.optimize()
            except Exception as exc:  # upkeep must never end the process; reported
                log.warning("vectors.edge.maintenance_failed", error=str(exc))

    def close(self) -> None:
        self._stop.set()
        if self._maintainer is not None:
            self._maintainer.join()
            self._maintainer = None
        with self._lock:
            for shard in self._shards.values():
                shard.flush()
                shard.close()
            self._shards.clear()

    # -- translation --

    def _prefetch(self, prefetch: Prefetch) -> Any:
        return edge.Prefetch(
            limit=prefetch.limit,
            query=self._query(prefetch.query),
            prefetches=[self._prefetch(p) for p in prefetch.prefetch] or None,
            filter=self._filter(prefetch.filter) if prefetch.filter else None,
            params=edge.SearchParams(hnsw_ef=max(HNSW_EF, prefetch.limit)),
        )

    def _query(self, query: Query) -> Any:
        if isinstance(query, Nearest):
            vector = (
                edge.SparseVector(query.vector.indices, query.vector.values)
                if isinstance(query.vector, SparseVector)
                else query.vector
            )
            return edge.Query.Nearest(vector, using=query.using)
        if isinstance(query, Diversify):
            return edge.Mmr(query.vector, query.relevance, query.candidates, using=query.using)
        if query.method == "dbsf":
            return edge.Fusion.Dbsf()
        return edge.Fusion.Rrf(k=query.k, weights=list(query.weights) if query.weights else None)

    def _filter(self, flt: Filter) -> Any:
        must: list[Any] = []
        for c in flt.must:
            if isinstance(c, Match):
                value = int(c.value) if isinstance(c.value, bool) else c.value
                must.append(edge.FieldCondition(key=c.key, match=edge.MatchValue(value)))
            elif isinstance(c, MatchAny):
                must.append(edge.FieldCondition(key=c.key, match=edge.MatchAny(list(c.values))))
            else:
                must.append(
                    edge.FieldCondition(
                        key=c.key,
                        range=edge.RangeDateTime(
                            gte=c.gte.isoformat() if c.gte else None,
                            lte=c.lte.isoformat() if c.lte else None,
                        ),
                    )
                )
        return edge.Filter(must=must)


def _unflag(payload: Payload) -> Payload:
    """A payload as written: the flags stored as 0/1 (``_payload``) read back as booleans."""
    return {k: bool(v) if k == "active" else v for k, v in payload.items()}


def _payload(payload: Payload) -> Payload:
    """Booleans stored as 0/1: qdrant-edge-py 0.9.0 reads a Python ``True`` in a match as the
    integer 1, which never equals a stored JSON ``true``; flags are indexed as integers."""
    return {k: int(v) if isinstance(v, bool) else v for k, v in payload.items()}


# Payload fields stored as 0/1 on Edge (see _payload) that are booleans everywhere else.
_FLAGS = ("active",)


def _exported(point_id: Any, vectors: Any, payload: Any) -> Point:
    """A point as a backup keeps it, whichever engine it came from: sparse vectors as
    ``SparseVector``, flags as booleans (restored into either engine)."""
    converted: dict[str, list[float] | SparseVector] = {}
    for name, vector in (vectors or {}).items():
        if hasattr(vector, "indices"):
            converted[name] = SparseVector(
                [int(i) for i in vector.indices], [float(v) for v in vector.values]
            )
        else:
            converted[name] = [float(v) for v in vector]
    plain = dict(payload or {})
    for flag in _FLAGS:
        if flag in plain and isinstance(plain[flag], int):
            plain[flag] = bool(plain[flag])
    return Point(uuid.UUID(str(point_id)), converted, plain)
