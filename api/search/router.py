"""Search over the caller's tenant: hybrid (default), dense or lexical."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from fastapi import APIRouter, HTTPException, status

from api.deps import CurrentPrincipal, RuntimeDep
from api.search.schemas import ChannelRanks, SearchRequest, SearchResponse, SearchResult
from haven.emb_client import EmbeddingRejected, EmbeddingUnavailable
from haven.index import SparseVector
from haven.search import QueryVectors, SearchFilters, SearchParams, search

router = APIRouter(prefix="/api/v1", tags=["search"])


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) else None


@router.post("/search", response_model=SearchResponse)
async def search_chunks(
    body: SearchRequest, principal: CurrentPrincipal, runtime: RuntimeDep
) -> SearchResponse:
    alias = runtime.settings.search_alias
    try:
        embedded = await runtime.emb.embed([body.query], aliases=[alias], sparse="query")
    except EmbeddingUnavailable as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "the embedding service is busy or down",
            headers={"Retry-After": str(int(exc.retry_after or 1))},
        ) from exc
    except EmbeddingRejected as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    item = embedded.data[0]
    sparse = item.sparse
    vectors = QueryVectors(
        alias=alias,
        dense=item.dense[alias],
        sparse=SparseVector(sparse.indices, sparse.values) if sparse else SparseVector([], []),
    )
    f = body.filters
    params = SearchParams(
        mode=body.mode,
        top_k=body.top_k,
        fusion=body.fusion,
        rrf_k=body.rrf_k,
        mmr=body.mmr,
        mmr_lambda=body.mmr_lambda,
        candidates=runtime.settings.search_candidates,
        filters=SearchFilters(
            tags=f.tags,
            document_ids=f.document_ids,
            mime=f.mime,
            lang=f.lang,
            updated_from=f.updated_from,
            updated_to=f.updated_to,
        ),
    )
    outcome = await asyncio.to_thread(search, runtime.index, principal.tenant_id, vectors, params)
    return SearchResponse(
        mode=body.mode,
        reason=outcome.reason,
        results=[
            SearchResult(
                document_id=uuid.UUID(str(hit.payload["document_id"])),
                title=str(hit.payload.get("title") or "") or None,
                version=_int(hit.payload.get("version")),
                page=_int(hit.payload.get("page")),
                heading=str(hit.payload["heading"]) if hit.payload.get("heading") else None,
                chunk_id=hit.chunk_id,
                text=str(hit.payload.get("text", "")),
                score=hit.score,
                ranks=ChannelRanks(dense=hit.dense_rank, lexical=hit.lexical_rank),
            )
            for hit in outcome.hits
        ],
    )
