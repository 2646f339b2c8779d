"""One RAG answer: retrieve, pack the prompt, answer from the cache or stream from llm.

``prepare`` does everything that can fail with a plain HTTP status (the embedding or the
generation service busy, a question too long for the model): it runs before a response starts.
``generate`` yields the answer as events; what goes wrong once the answer has started is an
``AnswerFailed`` event, which the chat stream sends as ``event: error``.

The chat endpoint (SSE or JSON) and the OpenAI-compatible endpoint both answer through here.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import redis
import structlog
from fastapi import HTTPException, status

from api.chat.prompt import (
    PLAIN_INSTRUCTIONS,
    RAG_INSTRUCTIONS,
    TEMPLATE_TOKENS_BASE,
    TEMPLATE_TOKENS_PER_MESSAGE,
    Passage,
    Turn,
    cited_numbers,
    keep_history,
    pack,
    source_block,
    user_content,
)
from api.chat.schemas import Citation, Source, UsageRead
from api.runtime import ApiRuntime
from api.search.schemas import SearchOptions
from api.search.service import retrieve
from haven.answer_cache import CachedAnswer, cache_key, chunk_hash
from haven.llm_client import Completed, Delta, LlmRejected, LlmUnavailable
from haven.search import Hit

log = structlog.get_logger("haven.chat")

# The labels ``user_content`` adds around the passages and the question.
LABEL_TOKENS = 12
# Below this, an answer is not worth starting.
MIN_ANSWER_TOKENS = 16


@dataclass(frozen=True)
class AnswerRequest:
    question: str
    history: list[Turn] = field(default_factory=list)
    rag: bool = True
    search: SearchOptions = field(default_factory=SearchOptions)
    max_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    # An application's own instructions (an OpenAI client's system message).
    instructions: str | None = None


@dataclass(frozen=True)
class PreparedAnswer:
    sources: list[Source]
    messages: list[dict[str, str]]
    answer_tokens: int
    temperature: float
    seed: int | None
    model: str
    cache_key: str | None
    cached: CachedAnswer | None
    reason: str | None


@dataclass(frozen=True)
class AnswerToken:
    text: str


@dataclass(frozen=True)
class AnswerDone:
    text: str
    finish_reason: str
    usage: UsageRead
    citations: list[Citation]
    cached: bool


@dataclass(frozen=True)
class AnswerFailed:
    reason: str
    status: int
    retry_after: int | None = None


AnswerEvent = AnswerToken | AnswerDone | AnswerFailed


def unavailable(what: str, retry_after: float | None) -> HTTPException:
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        f"{what} is busy or down; retry shortly",
        headers={"Retry-After": str(max(1, int(retry_after or 1)))},
    )


def _int(value: object) -> int | None:
    return value if isinstance(value, int) else None


def _passages(hits: list[Hit]) -> list[Passage]:
    return [
        Passage(
            chunk_id=str(hit.chunk_id),
            document_id=str(hit.payload["document_id"]),
            title=str(hit.payload.get("title") or "") or None,
            version=_int(hit.payload.get("version")),
            page=_int(hit.payload.get("page")),
            heading=str(hit.payload["heading"]) if hit.payload.get("heading") else None,
            score=hit.score,
            text=str(hit.payload.get("text", "")),
        )
        for hit in hits
    ]


def _history_hash(turns: list[Turn], rag: bool, instructions: str | None) -> str:
    material = json.dumps(
        [rag, instructions or "", [[t.role, t.content] for t in turns]], separators=(",", ":")
    )
    return hashlib.sha256(material.encode()).hexdigest()


async def prepare(
    runtime: ApiRuntime, tenant_id: uuid.UUID, request: AnswerRequest
) -> PreparedAnswer:
    settings = runtime.settings
    reason: str | None = None
    passages: list[Passage] = []
    if request.rag:
        outcome = await retrieve(runtime, tenant_id, request.question, request.search)
        passages, reason = _passages(list(outcome.hits)), outcome.reason

    instructions = RAG_INSTRUCTIONS if request.rag else PLAIN_INSTRUCTIONS
    if request.instructions:
        instructions = f"{instructions}\n\n{request.instructions}"
    # One call counts everything in the model's own tokenizer; a passage's number is not
    # known yet, so it is counted with a two-digit one.
    texts = [
        instructions,
        request.question,
        *(t.content for t in request.history),
        *(source_block(99, p) for p in passages),
    ]
    try:
        counted = await runtime.llm.count_tokens(texts)
    except LlmUnavailable as exc:
        raise unavailable("the generation service", exc.retry_after) from exc
    except LlmRejected as exc:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, str(exc)) from exc
    counts = counted.counts
    history_counts = counts[2 : 2 + len(request.history)]
    passage_counts = counts[2 + len(request.history) :]

    context = counted.context_length
    fixed = (counts[0] + counts[1] + 2 * TEMPLATE_TOKENS_PER_MESSAGE + TEMPLATE_TOKENS_BASE) + (
        LABEL_TOKENS if request.rag else 0
    )
    if context - fixed < MIN_ANSWER_TOKENS:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"the question takes {counts[1]} tokens, too many for the model's context of"
            f" {context} tokens",
        )
    answer_tokens = min(request.max_tokens or settings.chat_max_answer_tokens, context - fixed)
    room = context - fixed - answer_tokens
    history = keep_history(request.history, history_counts, min(room, int(context * 0.25)))
    # The kept turns are the newest ones: a suffix of the history.
    kept_counts = history_counts[len(history_counts) - len(history) :] if history else []
    room -= sum(c + TEMPLATE_TOKENS_PER_MESSAGE for c in kept_counts)
    kept = pack(passages, passage_counts, room)
    sources = [
        Source(
            n=n,
            chunk_id=uuid.UUID(passages[i].chunk_id),
            document_id=uuid.UUID(passages[i].document_id),
            title=passages[i].title,
            version=passages[i].version,
            page=passages[i].page,
            heading=passages[i].heading,
            score=passages[i].score,
            text=passages[i].text,
        )
        for n, i in enumerate(kept, start=1)
    ]
    if passages and not kept:
        reason = "no retrieved passage fits the model's context"
    blocks = [source_block(s.n, passages[i]) for s, i in zip(sources, kept, strict=True)]
    messages = [
        {"role": "system", "content": instructions},
        *({"role": t.role, "content": t.content} for t in history),
        {"role": "user", "content": user_content(request.question, blocks, request.rag)},
    ]

    model = f"{counted.model}:{counted.version}"
    key = cache_key(
        tenant_id,
        request.question,
        model,
        [chunk_hash(s.chunk_id, s.text) for s in sources],
        _history_hash(history, request.rag, request.instructions),
    )
    cached = None
    if settings.answer_cache_ttl_seconds > 0:
        try:
            cached = await runtime.answers.get(key)
        except redis.RedisError as exc:  # the cache is an accelerator only
            log.warning("chat.cache_unavailable", error=str(exc))
    return PreparedAnswer(
        sources=sources,
        messages=messages,
        answer_tokens=answer_tokens,
        temperature=settings.chat_temperature
        if request.temperature is None
        else request.temperature,
        seed=request.seed,
        model=model,
        cache_key=key if settings.answer_cache_ttl_seconds > 0 else None,
        cached=cached,
        reason=reason,
    )


def citations_of(text: str, sources: list[Source]) -> list[Citation]:
    cited = set(cited_numbers(text, len(sources)))
    return [
        Citation(
            n=s.n,
            chunk_id=s.chunk_id,
            document_id=s.document_id,
            title=s.title,
            version=s.version,
            page=s.page,
            cited=s.n in cited,
        )
        for s in sources
    ]


async def generate(
    runtime: ApiRuntime, tenant_id: uuid.UUID, prepared: PreparedAnswer
) -> AsyncIterator[AnswerEvent]:
    cached = prepared.cached
    if cached is not None:
        yield AnswerToken(cached.text)
        yield AnswerDone(
            text=cached.text,
            finish_reason=cached.finish_reason,
            usage=UsageRead.model_validate(cached.usage),
            citations=[Citation.model_validate(c) for c in cached.citations],
            cached=True,
        )
        return

    parts: list[str] = []
    try:
        async for event in runtime.llm.stream_chat(
            prepared.messages,
            max_tokens=prepared.answer_tokens,
            temperature=prepared.temperature,
            seed=prepared.seed,
        ):
            if isinstance(event, Delta):
                parts.append(event.text)
                yield AnswerToken(event.text)
            elif isinstance(event, Completed):
                text = "".join(parts)
                done = AnswerDone(
                    text=text,
                    finish_reason="stop" if event.finish_reason == "stop" else "length",
                    usage=UsageRead(
                        prompt_tokens=event.prompt_tokens,
                        completion_tokens=event.completion_tokens,
                        total_tokens=event.prompt_tokens + event.completion_tokens,
                    ),
                    citations=citations_of(text, prepared.sources),
                    cached=False,
                )
                await _remember(runtime, tenant_id, prepared, done)
                yield done
                return
    except LlmUnavailable as exc:
        yield AnswerFailed(
            str(exc), status.HTTP_503_SERVICE_UNAVAILABLE, max(1, int(exc.retry_after or 1))
        )
    except LlmRejected as exc:
        yield AnswerFailed(str(exc), status.HTTP_502_BAD_GATEWAY)


async def _remember(
    runtime: ApiRuntime, tenant_id: uuid.UUID, prepared: PreparedAnswer, done: AnswerDone
) -> None:
    if prepared.cache_key is None:
        return
    answer = CachedAnswer(
        text=done.text,
        citations=[c.model_dump(mode="json") for c in done.citations],
        usage=done.usage.model_dump(),
        finish_reason=done.finish_reason,
        document_ids=sorted({str(s.document_id) for s in prepared.sources}),
    )
    try:
        await runtime.answers.put(prepared.cache_key, tenant_id, answer)
    except redis.RedisError as exc:
        log.warning("chat.cache_unavailable", error=str(exc))
