"""The llm service's own endpoints beside the OpenAI ones."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

from haven.contracts.openai import MAX_MESSAGES, MAX_TEXT_CHARS, ChatMessage, check_text_size


class TokenizeRequest(BaseModel):
    """Token counts for prompt budgeting by callers (the API packs retrieved passages)."""

    # Room for a full conversation (MAX_MESSAGES) plus the instructions and the retrieved
    # passages a caller counts with it.
    texts: list[str] = Field(default_factory=list, max_length=4 * MAX_MESSAGES)
    # When given, also the length of the chat prompt these messages render to.
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=MAX_MESSAGES)

    @model_validator(mode="after")
    def _text_is_bounded(self) -> TokenizeRequest:
        total = sum(len(text) for text in self.texts)
        if total > 2 * MAX_TEXT_CHARS:
            raise ValueError(
                f"the texts hold {total} characters; the limit is {2 * MAX_TEXT_CHARS}"
            )
        if self.messages is not None:
            check_text_size(self.messages)
        return self


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
