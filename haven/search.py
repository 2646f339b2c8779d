"""Retrieval over the chunk index: dense, lexical (sparse BM25 with Qdrant's IDF) or hybrid.

Hybrid sends one batch to the vector store: the dense channel, the lexical channel (both only
to report each hit's rank per channel) and the fused query, whose two prefetches are fused
inside the engine by Reciprocal Rank Fusion (or score-normalised DBSF). MMR re-ranks the
candidates for diversity with the dense vectors (Qdrant's MMR). Every query filters on the
tenant and on active (fully indexed) versions, whatever the request asks. The same requests
run on a Qdrant server and on Qdrant Edge (``haven.vectorstore``).

Each channel is used only where it understands the query: the dense model's manifest declares
its languages, and a hybrid query in a language it does not declare (a Russian query to the
English-only MiniLM) skips the dense channel and is ranked by the lexical channel alone,
whose analyzer covers it — a dense ranking of a language the model never learnt is close to
noise, and fused in, it pulls a correct lexical ranking away (a down-weighted RRF channel
still moves hits; see ``Fuse``). It is skipped, not down-weighted. A query with no lexical
terms keeps the dense channel whatever its language, and ``mode="dense"`` is always dense.
The outcome says which channels ranked the hits and the query's language.

The API and ``bench/retrieval`` both run this code.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from haven.index import SPARSE_NAME, TENANT_KEY, ChunkIndex, SparseVector, dense_name
from haven.language import UNDETERMINED
from haven.vectorstore import (
    Condition,
    DatetimeRange,
    Diversify,
    Filter,
    Fuse,
    Match,
    MatchAny,
    Nearest,
    Prefetch,
    Request,
    Scored,
)

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
    # The query's language (haven.language) and the languages the dense model declares
    # (empty: not declared, trusted with every language).
    query_lang: str = UNDETERMINED
    dense_languages: tuple[str, ...] = ()


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
    # The channels that ranked the hits ("dense", "lexical"), and the query's language.
    channels: tuple[str, ...] = ()
    query_lang: str = UNDETERMINED


TIE_MARGIN = 10


def _ties_by_id(points: list[Scored], top_k: int, *, keep_order: bool) -> list[Scored]:
    if keep_order:
        return points[:top_k]
    return sorted(points, key=lambda p: (-p.score, str(p.id)))[:top_k]


def dense_understands(query_lang: str, dense_languages: tuple[str, ...]) -> bool:
    """Whether the dense model was made for the query's language (an undetermined query, or
    a model that declares no languages, gets the benefit of the doubt)."""
    return not dense_languages or query_lang == UNDETERMINED or query_lang in dense_languages


def effective_mode(params: SearchParams, has_terms: bool) -> Mode:
    """The mode a search runs in: hybrid becomes lexical for a query the dense model does
    not understand, as long as the query has lexical terms."""
    if (
        params.mode == "hybrid"
        and has_terms
        and not dense_understands(params.query_lang, params.dense_languages)
    ):
        return "lexical"
    return params.mode


def build_filter(tenant_id: uuid.UUID, filters: SearchFilters) -> Filter:
    must: list[Condition] = [Match(TENANT_KEY, str(tenant_id)), Match("active", True)]
    if filters.tags:
        must.append(MatchAny("tags", list(filters.tags)))
    if filters.document_ids:
        must.append(MatchAny("document_id", [str(d) for d in filters.document_ids]))
    if filters.mime:
        must.append(MatchAny("mime", list(filters.mime)))
    if filters.lang:
        must.append(MatchAny("lang", list(filters.lang)))
    if filters.updated_from or filters.updated_to:
        must.append(DatetimeRange("updated_at", gte=filters.updated_from, lte=filters.updated_to))
    return Filter(must=tuple(must))


def search(
    index: ChunkIndex, tenant_id: uuid.UUID, vectors: QueryVectors, params: SearchParams
) -> SearchOutcome:
    lang = params.query_lang
    if not index.exists():
        return SearchOutcome([], "nothing has been indexed yet", query_lang=lang)
    if params.mode == "lexical" and not vectors.sparse.indices:
        return SearchOutcome(
            [], "the query has no searchable terms (only stop words?)", query_lang=lang
        )
    mode = effective_mode(params, bool(vectors.sparse.indices))

    flt = build_filter(tenant_id, params.filters)
    using = dense_name(vectors.alias)
    limit = max(params.top_k, params.candidates)
    dense = Nearest(vectors.dense, using)
    lexical = Nearest(vectors.sparse, SPARSE_NAME)
    channels: dict[str, Nearest] = {}
    if mode in ("hybrid", "dense"):
        channels["dense"] = dense
    if mode in ("hybrid", "lexical") and vectors.sparse.indices:
        channels["lexical"] = lexical
    diversify = (
        Diversify(vectors.dense, using, relevance=params.mmr_lambda, candidates=limit)
        if params.mmr
        else None
    )

    # Equal scores are common (in a fusion, the 3rd of one channel alone ties with the 3rd of
    # the other alone) and the engine breaks them by storage order, which a restore or a
    # re-index changes: a few more are fetched and ties go by chunk id, so the same query on
    # the same points gives the same top-k. MMR's order is its own and is kept.
    final_limit = params.top_k if diversify is not None else params.top_k + TIE_MARGIN
    if mode == "dense":
        final = Request(diversify or dense, final_limit, flt, with_payload=True)
    elif mode == "lexical":
        final = Request(lexical, final_limit, flt, with_payload=True)
    else:
        prefetch = tuple(Prefetch(query, limit, flt) for query in channels.values())
        fusion = Fuse("rrf", k=params.rrf_k) if params.fusion == "rrf" else Fuse("dbsf")
        if diversify is None:
            final = Request(fusion, final_limit, prefetch=prefetch, with_payload=True)
        else:
            # Diversify the fused candidates by their dense vectors.
            final = Request(
                diversify,
                params.top_k,
                prefetch=(Prefetch(fusion, limit, prefetch=prefetch),),
                with_payload=True,
            )

    reported = {} if not params.channel_ranks and mode == "hybrid" else channels
    requests = [Request(query, limit, flt) for query in reported.values()]
    responses = index.store.query_batch(index.collection, [*requests, final])
    ranks = {
        name: {p.id: rank for rank, p in enumerate(response, start=1)}
        for name, response in zip(reported, responses, strict=False)
    }
    hits = [
        Hit(
            chunk_id=point.id,
            score=point.score,
            payload=point.payload,
            dense_rank=ranks.get("dense", {}).get(point.id),
            lexical_rank=ranks.get("lexical", {}).get(point.id),
        )
        for point in _ties_by_id(responses[-1], params.top_k, keep_order=diversify is not None)
    ]
    return SearchOutcome(
        hits,
        None if hits else "no indexed passage matched the query",
        channels=tuple(channels),
        query_lang=lang,
    )
