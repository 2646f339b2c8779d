from __future__ import annotations

import unicodedata
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.search.schemas import SearchOptions
from haven.contracts.text import FreeText, Title


class ChatCreate(BaseModel):
    title: Title | None = None


# A chat's title as a user names it (the column holds more: a first question's start).
CHAT_TITLE_LENGTH = 200


class ChatUpdate(BaseModel):
    """A rename: the title is trimmed, then must be 1..200 characters with no control
    characters (a NUL cannot be stored; a newline or an escape sequence has no place in a
    one-line name shown in every sidebar)."""

    title: str

    @field_validator("title")
    @classmethod
    def _one_line_name(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("the title is empty")
        if len(value) > CHAT_TITLE_LENGTH:
            raise ValueError(f"the title is longer than {CHAT_TITLE_LENGTH} characters")
        if any(unicodedata.category(c) == "Cc" for c in value):
            raise ValueError("the title must not contain control characters")
        return value


class ChatRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    title: str
    created_at: datetime
    updated_at: datetime


class ChatPage(BaseModel):
    items: list[ChatRead]
    total: int
    offset: int
    limit: int


class ChatSearch(SearchOptions):
    """The retrieval of a RAG answer: a few passages, since they must fit the prompt."""

    top_k: int = Field(default=6, ge=1, le=20)


class MessageCreate(BaseModel):
    content: FreeText = Field(min_length=1, max_length=8000)
    rag: bool = True
    search: ChatSearch = Field(default_factory=ChatSearch)
    # Any length may be asked; the operator's HAVEN_CHAT_MAX_ANSWER_TOKENS caps it.
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)

    @field_validator("content")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the message is empty")
        return value.strip()


class Source(BaseModel):
    """A retrieved passage as the prompt numbered it: the answer cites it as ``[n]``."""

    n: int
    chunk_id: uuid.UUID
    document_id: uuid.UUID
    title: str | None
    version: int | None
    page: int | None
    heading: str | None
    score: float
    text: str


# The longest passage a citation quotes; a longer one is cut and flagged ``text_truncated``.
CITATION_TEXT_CHARS = 2000


class Citation(BaseModel):
    """What ``[n]`` in an answer points at, with the passage quoted as the model saw it: it
    is stored with the message, so the citation still shows its passage after a reload and
    after the document is re-ingested or deleted (its chunk ids then no longer exist)."""

    n: int
    chunk_id: uuid.UUID
    document_id: uuid.UUID
    title: str | None
    version: int | None
    page: int | None
    # Whether the answer's text actually cites it (a model may not cite every passage).
    cited: bool
    # How that was decided: the answer's ``[n]`` markers, or (an answer without any) its
    # sentences' overlap with the passage's words and figures; None when not cited.
    cited_by: Literal["marker", "overlap"] | None = None
    heading: str | None = None
    # The passage (None in messages stored before passages were kept with their citations),
    # at most CITATION_TEXT_CHARS characters; ``text_truncated``: it was longer (show "…").
    text: str | None = None
    text_truncated: bool = False

    @classmethod
    def quoting(cls, source: Source, *, cited_by: Literal["marker", "overlap"] | None) -> Citation:
        text = source.text
        return cls(
            n=source.n,
            chunk_id=source.chunk_id,
            document_id=source.document_id,
            title=source.title,
            version=source.version,
            page=source.page,
            cited=cited_by is not None,
            cited_by=cited_by,
            heading=source.heading,
            text=text[:CITATION_TEXT_CHARS],
            text_truncated=len(text) > CITATION_TEXT_CHARS,
        )


class UsageRead(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class MessageRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    chat_id: uuid.UUID
    role: str
    content: str
    # Every source the answer was given, as stored with it (see Citation).
    citations: list[Citation]
    usage: dict[str, Any]
    created_at: datetime
    # The grounding check of an assistant's answer (None: not checked, e.g. without RAG).
    grounded: bool | None = None
    unsupported: list[dict[str, Any]] = []


class MessagePage(BaseModel):
    items: list[MessageRead]
    total: int
    offset: int
    limit: int


class AnswerRead(BaseModel):
    """The whole answer in one response (``Accept: application/json``)."""

    chat_id: uuid.UUID
    message_id: uuid.UUID
    request_id: str | None
    content: str
    sources: list[Source]
    citations: list[Citation]
    usage: UsageRead
    # "empty": the model said nothing visible; ``content`` is then a notice with the sources.
    finish_reason: Literal["stop", "length", "empty"]
    cached: bool
    reason: str | None = None
    # Figures, dates, codes and names of the answer that no offered source contains.
    grounded: bool | None = None
    unsupported: list[dict[str, Any]] = []
    notice: str | None = None
