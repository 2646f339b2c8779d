from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints, field_validator

from haven.contracts.text import FreeText, Tag

Query = Annotated[FreeText, StringConstraints(min_length=1, max_length=4000)]
Label = Annotated[FreeText, StringConstraints(max_length=200)]


class SearchFiltersIn(BaseModel):
    tags: list[Tag] | None = Field(default=None, max_length=50)
    document_ids: list[uuid.UUID] | None = Field(default=None, max_length=500)
    mime: list[Label] | None = Field(default=None, max_length=20)
    lang: list[Label] | None = Field(default=None, max_length=20)
    updated_from: datetime | None = None
    updated_to: datetime | None = None


class SearchOptions(BaseModel):
    """How to search: everything but the query (the chat reuses these for its retrieval)."""

    top_k: int = Field(default=10, ge=1, le=100)
    mode: Literal["hybrid", "dense", "lexical"] = "hybrid"
    filters: SearchFiltersIn = Field(default_factory=SearchFiltersIn)
    fusion: Literal["rrf", "dbsf"] = "rrf"
    rrf_k: int = Field(default=60, ge=1, le=1000)
    mmr: bool = False
    mmr_lambda: float = Field(default=0.5, ge=0.0, le=1.0)


class SearchRequest(SearchOptions):
    query: Query

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the query is empty")
        return value.strip()


class ChannelRanks(BaseModel):
    dense: int | None
    lexical: int | None


class SearchResult(BaseModel):
    document_id: uuid.UUID
    title: str | None
    version: int | None
    page: int | None
    heading: str | None
    chunk_id: uuid.UUID
    text: str
    score: float
    ranks: ChannelRanks
    # The chunk's language (ISO 639-1; "und": not determined or indexed before detection).
    lang: str = "und"
    # The embedding model version (name@version) whose vectors indexed the passage: after a
    # re-index switch, the new one.
    embed_model: str | None = None


class SearchResponse(BaseModel):
    results: list[SearchResult]
    reason: str | None = None
    mode: str
    # The query's language (ISO 639-1, "und" when not determined) and the channels that
    # ranked the results: a hybrid query in a language the dense model does not declare is
    # ranked by the lexical channel alone.
    query_lang: str = "und"
    channels: list[Literal["dense", "lexical"]] = []
