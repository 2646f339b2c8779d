"""The llm service's own endpoints beside the OpenAI ones."""

from __future__ import annotations

from pydantic import BaseModel, Field

from haven.contracts.openai import ChatMessage


class TokenizeRequest(BaseModel):
    """Token counts for prompt budgeting by callers (the API packs retrieved passages)."""

    texts: list[str] = Field(default_factory=list, max_length=1024)
    # When given, also the length of the chat prompt these messages render to.
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)


class TokenizeResponse(BaseModel):
    model: str  # the alias served
    version: str
    # The served file's identity (manifest name and sha256), so callers that keep results
    # (the API's answer cache) can tell two models behind one alias and version apart.
    name: str | None = None
    sha256: str | None = None
    context_length: int
    counts: list[int]
    prompt_tokens: int | None = None
