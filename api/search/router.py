"""Search over the caller's tenant: hybrid (default), dense or lexical."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter

from api.deps import CurrentPrincipal, RuntimeDep
from api.search.schemas import ChannelRanks, SearchRequest, SearchResponse, SearchResult
from api.search.service import retrieve

router = APIRouter(prefix="/api/v1", tags=["search"])


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) else None


def _embed_model(payload: dict[str, Any], alias: str) -> str | None:
    models = payload.get("embed_models")
    found = models.get(alias) if isinstance(models, dict) else None
    return str(found) if found else None


@router.post("/search", response_model=SearchResponse)
async def search_chunks(
    body: SearchRequest, principal: CurrentPrincipal, runtime: RuntimeDep
) -> SearchResponse:
    outcome = await retrieve(runtime, principal.tenant_id, body.query, body)
    return SearchResponse(
        mode=body.mode,
        reason=outcome.reason,
        query_lang=outcome.query_lang,
        channels=list(outcome.channels),
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
                lang=str(hit.payload.get("lang") or "und"),
                embed_model=_embed_model(hit.payload, runtime.settings.search_alias),
            )
            for hit in outcome.hits
        ],
    )
