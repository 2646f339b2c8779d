"""The OpenAI wire format (requests, answers, stream chunks, errors), spoken by the llm service
and by the API's OpenAI-compatible RAG endpoint.

Only what Haven serves is modelled. Unknown request fields are ignored rather than refused,
because OpenAI clients send fields (``user``, ``logit_bias`` ...) that change nothing here.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FinishReason = Literal["stop", "length"]

# Caps on what one request may carry, checked when the request is parsed (a 4xx naming the
# limit), before anything is tokenised: no model's context holds more, and tokenising
# unbounded text costs every other caller time.
MAX_MESSAGES = 1024
MAX_TEXT_CHARS = 1_000_000
MAX_PROMPT_TOKEN_IDS = 262_144


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = True


class SamplingRequest(BaseModel):
    """The parameters shared by chat and text completions."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    n: int = Field(default=1, ge=1, le=1)

    @model_validator(mode="after")
    def _stop_is_small(self) -> SamplingRequest:
        stops = self.stop_sequences()
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes at most 4 non-empty strings")
        return self

    def stop_sequences(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


def check_text_size(messages: list[ChatMessage]) -> None:
    total = sum(len(message.text()) for message in messages)
    if total > MAX_TEXT_CHARS:
        raise ValueError(f"the messages hold {total} characters; the limit is {MAX_TEXT_CHARS}")


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    # Newer OpenAI clients send this name instead of max_tokens.
    max_completion_tokens: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _text_is_bounded(self) -> ChatCompletionRequest:
        check_text_size(self.messages)
        return self

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingRequest):
    prompt: str | list[int] = Field(min_length=1)

    @model_validator(mode="after")
    def _prompt_is_bounded(self) -> CompletionRequest:
        if isinstance(self.prompt, str) and len(self.prompt) > MAX_TEXT_CHARS:
            raise ValueError(
                f"the prompt holds {len(self.prompt)} characters; the limit is {MAX_TEXT_CHARS}"
            )
        if isinstance(self.prompt, list) and len(self.prompt) > MAX_PROMPT_TOKEN_IDS:
            raise ValueError(
                f"the prompt holds {len(self.prompt)} token ids; the limit is"
                f" {MAX_PROMPT_TOKEN_IDS}"
            )
        return self

    def token_limit(self) -> int | None:
        return self.max_tokens


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class TextChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: FinishReason | None = None
    logprobs: None = None


class TextCompletion(BaseModel):
    """Both the answer and the stream chunk of ``/v1/completions`` (OpenAI uses one shape)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "haven"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def error_body(
    message: str,
    *,
    type_: str,
    code: str,
    param: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """OpenAI's error shape, which OpenAI clients turn into a readable exception."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code, **extra}}
