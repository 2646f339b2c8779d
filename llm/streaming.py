"""Answers in OpenAI's shapes: whole responses, and server-sent event streams of chunks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from haven.contracts.openai import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    FinishReason,
    TextChoice,
    TextCompletion,
    Usage,
    error_body,
)
from llm.engine import Failed, Finished, TextDelta
from llm.service import Generation

DONE = "data: [DONE]\n\n"
SSE_HEADERS = {
    "Cache-Control": "no-cache",
    # nginx: pass each chunk on as it comes (SPEC §8 also turns buffering off there).
    "X-Accel-Buffering": "no",
}


def sse(payload: str) -> str:
    return f"data: {payload}\n\n"


def timeout_message(limit: float) -> str:
    return f"generation exceeded the request time limit of {limit:g}s"


@dataclass(frozen=True)
class Outcome:
    """A generation run to its end, for a non-streamed answer."""

    text: str
    finished: Finished | None
    error: BaseException | None


async def collect(generation: Generation) -> Outcome:
    parts: list[str] = []
    async for event in generation.events():
        if isinstance(event, TextDelta):
            parts.append(event.text)
        elif isinstance(event, Finished):
            return Outcome("".join(parts), event, None)
        else:
            return Outcome("".join(parts), None, event.error)
    raise AssertionError("events() always ends with Finished or Failed")


@dataclass(frozen=True)
class ChatShape:
    id: str
    created: int
    model: str

    def answer(self, text: str, reason: FinishReason, usage: Usage) -> ChatCompletion:
        return ChatCompletion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[ChatChoice(message=AssistantMessage(content=text), finish_reason=reason)],
            usage=usage,
        )

    def first_chunk(self) -> str | None:
        return self._chunk(ChatDelta(role="assistant", content=""))

    def delta(self, text: str) -> str:
        return self._chunk(ChatDelta(content=text))

    def final(self, reason: FinishReason, usage: Usage | None) -> str:
        return self._chunk(ChatDelta(), reason, usage)

    def _chunk(
        self, delta: ChatDelta, reason: FinishReason | None = None, usage: Usage | None = None
    ) -> str:
        chunk = ChatCompletionChunk(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[ChatChunkChoice(delta=delta, finish_reason=reason)],
            usage=usage,
        )
        return sse(chunk.model_dump_json(exclude_none=True))


@dataclass(frozen=True)
class TextShape:
    id: str
    created: int
    model: str

    def answer(self, text: str, reason: FinishReason, usage: Usage) -> TextCompletion:
        return self._completion(text, reason, usage)

    def first_chunk(self) -> str | None:
        return None  # text completions have no role chunk

    def delta(self, text: str) -> str:
        return sse(self._completion(text, None, None).model_dump_json(exclude_none=True))

    def final(self, reason: FinishReason, usage: Usage | None) -> str:
        return sse(self._completion("", reason, usage).model_dump_json(exclude_none=True))

    def _completion(
        self, text: str, reason: FinishReason | None, usage: Usage | None
    ) -> TextCompletion:
        return TextCompletion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[TextChoice(text=text, finish_reason=reason)],
            usage=usage,
        )


Shape = ChatShape | TextShape


async def event_stream(
    generation: Generation, shape: Shape, *, include_usage: bool, time_limit: float
) -> AsyncIterator[str]:
    first = shape.first_chunk()
    if first is not None:
        yield first
    async for event in generation.events():
        if isinstance(event, TextDelta):
            yield shape.delta(event.text)
        elif isinstance(event, Finished):
            if event.reason in {"stop", "length"}:
                usage = usage_of(event) if include_usage else None
                yield shape.final(finish_reason(event), usage)
            elif event.reason == "timeout":
                yield sse(_error_json(timeout_message(time_limit), "timeout", "request_timeout"))
        elif isinstance(event, Failed):
            yield sse(_error_json("generation failed", "server_error", "internal_error"))
    yield DONE


def _error_json(message: str, type_: str, code: str) -> str:
    return json.dumps(error_body(message, type_=type_, code=code))


class GenerationStream(StreamingResponse):
    """An SSE response that stops its generation however the response ends: finished,
    client gone (Starlette cancels the body), or an error while sending."""

    def __init__(self, generation: Generation, content: AsyncIterator[str]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=SSE_HEADERS)
        self.generation = generation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.generation.cancel.set()


def usage_of(finished: Finished) -> Usage:
    return Usage.of(finished.prompt_tokens, finished.completion_tokens)


def finish_reason(finished: Finished) -> FinishReason:
    # "cancelled" and "timeout" never reach an answer; everything else ended normally.
    return "stop" if finished.reason == "stop" else "length"
