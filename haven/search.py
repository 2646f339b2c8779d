"""Retrieval over the chunk index: dense, lexical (sparse BM25 with Qdrant's IDF) or hybrid.

Hybrid sends one batch to Qdrant: the dense channel, the lexical channel (both only to report
each hit's rank per channel) and the fused query, whose two prefetches are fused server-side
by Reciprocal Rank Fusion (or score-normalised DBSF). MMR re-ranks the candidates for
diversity with the dense vectors (server-side, Qdrant's MMR). Every query filters on the
tenant and on active (fully indexed) versions, whatever the request asks.

The API and ``bench/retrieval`` both run this code.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from qdrant_client import models

from haven.index import SPARSE_NAME, ChunkIndex, SparseVector, dense_name

Mode = Literal["hybrid", "dense", "lexical"]
FusionName = Literal["rrf", "dbsf"]


@dataclass(frozen=True)
class SearchFilters:
    tags: list[str] | None = None
    document_ids: list[uuid.UUID] | None = None
    mime: list[str] | None = None
    lang: list[str] | None = None
    updated_from: datetime | None = None
    updated_to: datetime | None = None


@dataclass(frozen=True)
class SearchParams:
    mode: Mode = "hybrid"
    top_k: int = 10
    fusion: FusionName = "rrf"
    rrf_k: int = 60
    mmr: bool = False
    mmr_lambda: float = 0.5
    candidates: int = 100
    filters: SearchFilters = field(default_factory=SearchFilters)
    # Run each channel on its own as well, to report every hit's rank per channel. The fused
    # result is the same without; a caller that only needs it (the benchmark) saves the
    # second scoring of both channels.
    channel_ranks: bool = True


@dataclass(frozen=True)
class QueryVectors:
    alias: str
    dense: list[float]
    sparse: SparseVector


@dataclass(frozen=True)
class Hit:
    chunk_id: uuid.UUID
    score: float
    payload: dict[str, object]
    dense_rank: int | None
    lexical_rank: int | None


@dataclass(frozen=True)
class SearchOutcome:
    hits: list[Hit]
    reason: str | None


def build_filter(tenant_id: uuid.UUID, filters: SearchFilters) -> models.Filter:
    must: list[models.Condition] = [
        models.FieldCondition(key="tenant_id", match=models.MatchValue(value=str(tenant_id))),
        models.FieldCondition(key="active", match=models.MatchValue(value=True)),
    ]
    if filters.tags:
        must.append(models.FieldCondition(key="tags", match=models.MatchAny(any=filters.tags)))
    if filters.document_ids:
        must.append(
            models.FieldCondition(
                key="document_id", match=models.MatchAny(any=[str(d) for d in filters.document_ids])
            )
        )
    if filters.mime:
        must.append(models.FieldCondition(key="mime", match=models.MatchAny(any=filters.mime)))
    if filters.lang:
        must.append(models.FieldCondition(key="lang", match=models.MatchAny(any=filters.lang)))
    if filters.updated_from or filters.updated_to:
        must.append(
            models.FieldCondition(
                key="updated_at",
                range=models.DatetimeRange(gte=filters.updated_from, lte=filters.updated_to),
            )
        )
    return models.Filter(must=must)


def _sparse(vector: SparseVector) -> models.SparseVector:
    return models.SparseVector(indices=vector.indices, values=vector.values)


def search(
    index: ChunkIndex, tenant_id: uuid.UUID, vectors: QueryVectors, params: SearchParams
) -> SearchOutcome:
    if not index.client.collection_exists(index.collection):
        return SearchOutcome([], "nothing has been indexed yet")
    if params.mode == "lexical" and not vectors.sparse.indices:
        return SearchOutcome([], "the query has no searchable terms (only stop words?)")

    flt = build_filter(tenant_id, params.filters)
    using = dense_name(vectors.alias)
    limit = max(params.top_k, params.candidates)
    mmr = (
        models.Mmr(diversity=1.0 - params.mmr_lambda, candidates_limit=limit)
        if params.mmr
        else None
    )
    dense_req = models.QueryRequest(
        query=vectors.dense, using=using, filter=flt, limit=limit, with_payload=False
    )
    lexical_req = models.QueryRequest(
        query=_sparse(vectors.sparse),
        using=SPARSE_NAME,
        filter=flt,
        limit=limit,
        with_payload=False,
    )
    channels: list[models.QueryRequest] = []
    if params.mode in ("hybrid", "dense"):
        channels.append(dense_req)
    if params.mode in ("hybrid", "lexical") and vectors.sparse.indices:
        channels.append(lexical_req)

    if params.mode == "dense":
        final = models.QueryRequest(
            query=models.NearestQuery(nearest=vectors.dense, mmr=mmr),
            using=using,
            filter=flt,
            limit=params.top_k,
            with_payload=True,
        )
    elif params.mode == "lexical":
        final = models.QueryRequest(
            query=_sparse(vectors.sparse),
            using=SPARSE_NAME,
            filter=flt,
            limit=params.top_k,
            with_payload=True,
        )
    else:
        prefetch = [
            models.Prefetch(query=c.query, using=c.using, filter=flt, limit=limit) for c in channels
        ]
        fusion: models.Query = (
            models.RrfQuery(rrf=models.Rrf(k=params.rrf_k))
            if params.fusion == "rrf"
            else models.FusionQuery(fusion=models.Fusion.DBSF)
        )
        if mmr is None:
            final = models.QueryRequest(
                prefetch=prefetch, query=fusion, limit=params.top_k, with_payload=True
            )
        else:
            # Diversify the fused candidates by their dense vectors.
            final = models.QueryRequest(
                prefetch=models.Prefetch(prefetch=prefetch, query=fusion, limit=limit),
                query=models.NearestQuery(nearest=vectors.dense, mmr=mmr),
                using=using,
                limit=params.top_k,
                with_payload=True,
            )

    if not params.channel_ranks and params.mode == "hybrid":
        reported: list[models.QueryRequest] = []
    else:
        reported = channels
    responses = index.client.query_batch_points(index.collection, [*reported, final])
    ranks: dict[str, dict[str, int]] = {}
    for request, response in zip(reported, responses, strict=False):
        name = "lexical" if request.using == SPARSE_NAME else "dense"
        ranks[name] = {str(p.id): rank for rank, p in enumerate(response.points, start=1)}
    hits = [
        Hit(
            chunk_id=uuid.UUID(str(point.id)),
            score=float(point.score),
            payload=dict(point.payload or {}),
            dense_rank=ranks.get("dense", {}).get(str(point.id)),
            lexical_rank=ranks.get("lexical", {}).get(str(point.id)),
        )
        for point in responses[-1].points
    ]
    return SearchOutcome(hits, None if hits else "no indexed passage matched the query")
