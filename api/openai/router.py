"""The OpenAI-compatible RAG endpoint: model ``haven-rag`` answers from the caller's documents.

Open WebUI, the Vercel AI SDK, LangChain and the ``openai`` client work unchanged: point their
base URL at ``https://haven.example/v1`` and use a Haven API key (or a user's token) as the
key. The last user message is the question, earlier user and assistant messages are the
conversation, system messages are added to Haven's instructions. Each answer carries, in
extra fields (the final chunk's, when streamed): ``citations``, every source the prompt
offered with ``cited: true|false`` and the passage it quoted (``text``, cut at 2,000
characters with ``text_truncated``), cached answer or not; ``grounded`` and ``unsupported``,
the figures, dates, codes and names of the answer that no source contains; and
``finish_reason_detail: "empty"`` when the model said nothing, whose content is then a notice
listing the sources. The answer's length is capped by the operator's
``HAVEN_CHAT_MAX_ANSWER_TOKENS`` whatever ``max_tokens`` asks. Retrieval options go in
the request's ``search`` field (``extra_body`` in the OpenAI SDKs); ``rag: false`` answers
without the documents. Nothing is stored as a chat: applications keep their own history.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request, status
from fastapi.responses import JSONResponse, Response
from pydantic import Field

from api.chat.answer import AnswerDone, AnswerFailed, AnswerRequest, AnswerToken, generate, prepare
from api.chat.metering import Meter
from api.chat.prompt import Turn
from api.chat.schemas import ChatSearch
from api.chat.service import settle
from api.chat.stream import AnswerStream, with_heartbeat
from api.deps import CurrentPrincipal, RequestIdDep, RuntimeDep
from api.errors import retry_after_header, status_for
from haven import errors
from haven.contracts.openai import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ModelCard,
    ModelList,
    Usage,
    error_body,
    new_id,
    now,
)

MODEL = "haven-rag"
DONE = "data: [DONE]\n\n"

router = APIRouter(prefix="/v1", tags=["openai"])
STARTED = now()


class RagCompletionRequest(ChatCompletionRequest):
    rag: bool = True
    search: ChatSearch = Field(default_factory=ChatSearch)


class RagCompletion(ChatCompletion):
    citations: list[dict[str, Any]]
    grounded: bool | None = None
    unsupported: list[dict[str, Any]] = []
    finish_reason_detail: str | None = None


class RagCompletionChunk(ChatCompletionChunk):
    citations: list[dict[str, Any]] | None = None
    grounded: bool | None = None
    unsupported: list[dict[str, Any]] | None = None
    finish_reason_detail: str | None = None


def _extras(done: AnswerDone) -> dict[str, Any]:
    """Haven's fields of a finished answer, beside OpenAI's."""
    return {
        "citations": [c.model_dump(mode="json") for c in done.citations],
        "grounded": done.grounded,
        "unsupported": done.unsupported,
        "finish_reason_detail": "empty" if done.finish_reason == "empty" else None,
    }


def _openai_finish(done: AnswerDone) -> Literal["stop", "length"]:
    # OpenAI clients know only these; an empty answer ended by itself.
    return "length" if done.finish_reason == "length" else "stop"


def _error(
    status_code: int, message: str, code: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    kind = "invalid_request_error" if status_code < 500 else "server_error"
    return JSONResponse(
        error_body(message, type_=kind, code=code), status_code=status_code, headers=headers
    )


def _domain_error(exc: errors.DomainError) -> JSONResponse:
    """A domain error in OpenAI's error shape, with the status ``api.errors`` gives it."""
    status_code = status_for(exc)
    headers = None
    if isinstance(exc, errors.Unavailable | errors.LimitExceeded):
        headers = retry_after_header(exc.retry_after)
    code = "overloaded" if status_code == 503 else exc.code
    if isinstance(exc, errors.LimitExceeded) and exc.details:
        # A quota's refusal says which (reason) and, for the budget, its figures.
        kind = "rate_limit_error"
        body = error_body(exc.message, type_=kind, code=code, **exc.details)
        return JSONResponse(body, status_code=status_code, headers=headers)
    return _error(status_code, exc.message, code, headers)


@router.get("/models")
async def list_models(_: CurrentPrincipal) -> ModelList:
    return ModelList(data=[ModelCard(id=MODEL, created=STARTED)])


def _answer_request(body: RagCompletionRequest) -> AnswerRequest:
    messages = [m for m in body.messages if m.role in ("system", "developer", "user", "assistant")]
    if not messages or messages[-1].role != "user" or not messages[-1].text().strip():
        raise errors.Invalid("the last message must be the user's question", code="invalid_request")
    instructions = "\n\n".join(
        m.text() for m in messages if m.role in ("system", "developer") and m.text().strip()
    )
    history = [Turn(m.role, m.text()) for m in messages[:-1] if m.role in ("user", "assistant")]
    return AnswerRequest(
        question=messages[-1].text().strip(),
        history=history,
        rag=body.rag,
        search=body.search,
        max_tokens=body.token_limit(),
        temperature=body.temperature,
        seed=body.seed,
        top_p=body.top_p if body.top_p != 1.0 else None,
        stop=tuple(body.stop_sequences()),
        presence_penalty=body.presence_penalty or None,
        frequency_penalty=body.frequency_penalty or None,
        instructions=instructions or None,
    )


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: RagCompletionRequest,
    request: Request,
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    request_id: RequestIdDep,
) -> Response:
    if body.model not in (None, MODEL):
        return _error(
            status.HTTP_404_NOT_FOUND,
            f"model {body.model!r} does not exist; this endpoint serves {MODEL!r}",
            "model_not_found",
        )
    started = time.perf_counter()
    lease = None
    meter = Meter(runtime, principal, "chat", request_id, started)
    try:
        # Over the stream cap or the budget: a 429 before anything is streamed.
        if body.stream:
            lease = await runtime.quotas.open_stream(principal, request.state.limits)
        prepared = await prepare(runtime, principal.tenant_id, _answer_request(body))
        await meter.reserve(prepared)
    except errors.DomainError as exc:
        await runtime.quotas.streams.close(lease)
        return _domain_error(exc)
    except BaseException:
        await runtime.quotas.streams.close(lease)
        raise
    events = meter.track(generate(runtime, principal.tenant_id, prepared))
    completion_id, created = new_id("chatcmpl"), now()
    done: AnswerDone | None = None

    async def record() -> None:
        await meter.measure()
        await runtime.in_db_thread(settle, runtime.session_factory, meter, time.perf_counter())

    async def account() -> None:
        try:
            await record()  # an answer cut short; one that ended was recorded already
        finally:
            await runtime.quotas.streams.close(lease)

    if not body.stream:
        try:
            async for event in events:
                if isinstance(event, AnswerFailed):
                    return _domain_error(event.error)
                if isinstance(event, AnswerDone):
                    done = event
        finally:
            await account()
        if done is None:
            raise AssertionError("an answer always ends with done or an error")
        answer = RagCompletion(
            id=completion_id,
            created=created,
            model=MODEL,
            choices=[
                ChatChoice(
                    message=AssistantMessage(content=done.text),
                    finish_reason=_openai_finish(done),
                )
            ],
            usage=Usage.of(done.usage.prompt_tokens, done.usage.completion_tokens),
            **_extras(done),
        )
        return JSONResponse(answer.model_dump(mode="json"))

    include_usage = body.stream_options is None or body.stream_options.include_usage

    def chunk(delta: ChatDelta, **extra: Any) -> str:
        payload = RagCompletionChunk(
            id=completion_id,
            created=created,
            model=MODEL,
            choices=[ChatChunkChoice(delta=delta, finish_reason=extra.pop("reason", None))],
            **extra,
        )
        return f"data: {payload.model_dump_json(exclude_none=True)}\n\n"

    async def stream() -> AsyncIterator[str]:
        # An answer that ends is charged before its last chunk goes out: a client that has
        # read the usage finds it in the ledger, even if the API process dies right after.
        nonlocal done
        yield chunk(ChatDelta(role="assistant", content=""))
        async for event in events:
            if isinstance(event, AnswerToken):
                yield chunk(ChatDelta(content=event.text))
            elif isinstance(event, AnswerDone):
                done = event
                await record()
                usage = (
                    Usage.of(event.usage.prompt_tokens, event.usage.completion_tokens)
                    if include_usage
                    else None
                )
                yield chunk(
                    ChatDelta(), reason=_openai_finish(event), usage=usage, **_extras(event)
                )
            else:
                await record()
                error = error_body(
                    event.reason,
                    type_="server_error",
                    code="overloaded" if event.status == 503 else event.error.code,
                    retry_after=event.retry_after,
                )
                yield f"data: {json.dumps(error)}\n\n"
        yield DONE

    return AnswerStream(with_heartbeat(stream(), runtime.settings.chat_heartbeat_seconds), account)
