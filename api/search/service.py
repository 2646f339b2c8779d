"""Retrieval for the API: embed the query through emb, then search the tenant's chunks.

The search endpoint and the chat's RAG answers both come through here.
"""

from __future__ import annotations

import asyncio
import uuid

import structlog

from api.runtime import ApiRuntime
from api.search.schemas import SearchOptions
from haven.emb_client import EmbeddingRejected, EmbeddingUnavailable
from haven.errors import Invalid, Unavailable
from haven.index import SparseVector
from haven.search import QueryVectors, SearchFilters, SearchOutcome, SearchParams, search
from haven.tracing import span
from haven.vectors import make_index

log = structlog.get_logger("haven.search")


async def retrieve(
    runtime: ApiRuntime, tenant_id: uuid.UUID, query: str, options: SearchOptions
) -> SearchOutcome:
    alias = runtime.settings.search_alias
    # The live collection and the model version its vectors come from: the query is
    # embedded with that version even when the alias has moved on (a re-index is running).
    pointer = await asyncio.to_thread(runtime.pointer.get)
    pin = pointer.live.models.get(alias)
    index = make_index(runtime.settings, runtime.qdrant_store, pointer)
    try:
        # The query's language is told while emb embeds it.
        embedded, query_lang = await asyncio.gather(
            runtime.emb.embed(
                [query],
                aliases=[alias],
                sparse="query",
                input_type="query",
                pins={alias: pin} if pin else None,
            ),
            asyncio.to_thread(runtime.detector.detect, query),
        )
    except EmbeddingUnavailable as exc:
        raise Unavailable(
            "the embedding service is busy or down",
            retry_after=exc.retry_after,
            code="search.embedding_unavailable",
        ) from exc
    except EmbeddingRejected as exc:
        # emb's own words go to the log with the request id, not to the caller.
        log.warning("search.embedding_rejected", error=str(exc))
        raise Invalid(
            "the embedding service refused the query", code="search.query_rejected"
        ) from exc
    item = embedded.data[0]
    model = next((m for m in embedded.models if m.alias == alias), None)
    sparse = item.sparse
    vectors = QueryVectors(
        alias=alias,
        dense=item.dense[alias],
        sparse=SparseVector(sparse.indices, sparse.values) if sparse else SparseVector([], []),
    )
    f = options.filters
    params = SearchParams(
        mode=options.mode,
        top_k=options.top_k,
        fusion=options.fusion,
        rrf_k=options.rrf_k,
        mmr=options.mmr,
        mmr_lambda=options.mmr_lambda,
        candidates=runtime.settings.search_candidates,
        query_lang=query_lang,
        dense_languages=tuple(model.languages) if model else (),
        filters=SearchFilters(
            tags=f.tags,
            document_ids=f.document_ids,
            mime=f.mime,
            lang=f.lang,
            updated_from=f.updated_from,
            updated_to=f.updated_to,
        ),
    )
    with span("qdrant.search", mode=str(params.mode), top_k=params.top_k):
        return await asyncio.to_thread(search, index, tenant_id, vectors, params)
