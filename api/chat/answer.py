"""One RAG answer: retrieve, pack the prompt, answer from the cache or stream from llm.

``prepare`` does everything that can fail before a response starts (the embedding or the
generation service busy, a question too long for the model) and raises ``haven.errors``
domain errors for it. ``generate`` yields the answer as events; what goes wrong once the
answer has started is an ``AnswerFailed`` event, which the chat stream sends as
``event: error``.

Every answer ends with what a user needs to check it: the citations of *every* source the
prompt offered (each marked cited or not) and the grounding check (``api.chat.grounding``),
both worked out from this request's own sources, from the cache or not. An answer in which
the model said nothing visible ends ``empty`` and carries a notice with the sources instead
of an empty string; it is never cached.

The chat endpoint (SSE or JSON) and the OpenAI-compatible endpoint both answer through here.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import redis
import structlog

from api.chat.grounding import Grounding, attribute, check
from api.chat.prompt import (
    HISTORY_SHARE,
    PLAIN_INSTRUCTIONS,
    RAG_INSTRUCTIONS,
    TEMPLATE_TOKENS_BASE,
    TEMPLATE_TOKENS_PER_MESSAGE,
    Passage,
    Turn,
    by_question_terms,
    cited_numbers,
    keep_history,
    pack,
    passage_limits,
    shorten,
    source_block,
    user_content,
)
from api.chat.schemas import Citation, Source, UsageRead
from api.errors import status_for
from api.runtime import ApiRuntime
from api.search.schemas import SearchOptions
from api.search.service import retrieve
from haven import errors
from haven.answer_cache import CachedAnswer, cache_key, chunk_hash
from haven.llm_client import Completed, Delta, LlmRejected, LlmUnavailable, Sampling
from haven.search import Hit

log = structlog.get_logger("haven.chat")

# The labels ``user_content`` adds around the passages and the question.
LABEL_TOKENS = 12
# Below this, an answer is not worth starting.
MIN_ANSWER_TOKENS = 16
# Below this, a passage cut to fit is not worth offering.
MIN_PASSAGE_TOKENS = 32
# Chat-template markers a model may spell out instead of ending its turn; they are not an
# answer a user can read.
_TEMPLATE_MARKERS = re.compile(r"<\|[^|<>\s]{1,40}\|>|<(?:start|end)_of_turn>|</?s>")
EMPTY_NOTICE = "The model gave no answer to this question."


# "empty": the model said nothing a user can see.
FinishReason = Literal["stop", "length", "empty"]


@dataclass(frozen=True)
class AnswerRequest:
    question: str
    history: list[Turn] = field(default_factory=list)
    rag: bool = True
    search: SearchOptions = field(default_factory=SearchOptions)
    max_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    # An application's own instructions (an OpenAI client's system message).
    instructions: str | None = None


@dataclass(frozen=True)
class PreparedAnswer:
    sources: list[Source]
    messages: list[dict[str, str]]
    sampling: Sampling
    model: str
    cache_key: str | None
    cached: CachedAnswer | None
    reason: str | None
    rag: bool = True
    # What was asked: the grounding check reads an answer's figures in its light.
    question: str = ""

    @property
    def answer_tokens(self) -> int:
        return self.sampling.max_tokens


@dataclass(frozen=True)
class AnswerToken:
    text: str


@dataclass(frozen=True)
class AnswerDone:
    # What the user is shown and what is stored: the model's text, or for an empty answer
    # the notice with the sources.
    text: str
    finish_reason: FinishReason
    usage: UsageRead
    citations: list[Citation]
    cached: bool
    # None when the answer did not use the documents (nothing to compare it with).
    grounding: Grounding | None = None
    notice: str | None = None

    @property
    def grounded(self) -> bool | None:
        return None if self.grounding is None else self.grounding.grounded

    @property
    def unsupported(self) -> list[dict[str, Any]]:
        if self.grounding is None:
            return []
        return [span.as_dict() for span in self.grounding.unsupported]

    def grounding_fields(self) -> dict[str, Any]:
        return {"grounded": self.grounded, "unsupported": self.unsupported}


@dataclass(frozen=True)
class AnswerFailed:
    error: errors.DomainError

    @property
    def reason(self) -> str:
        return self.error.message

    @property
    def status(self) -> int:
        return status_for(self.error)

    @property
    def retry_after(self) -> int | None:
        if isinstance(self.error, errors.Unavailable | errors.LimitExceeded):
            return max(1, math.ceil(self.error.retry_after or 1))
        return None


AnswerEvent = AnswerToken | AnswerDone | AnswerFailed


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


def _prompt_hash(instructions: str, turns: list[Turn], rag: bool) -> str:
    material = json.dumps(
        [rag, instructions, [[t.role, t.content] for t in turns]], separators=(",", ":")
    )
    return hashlib.sha256(material.encode()).hexdigest()


def answer_budget(requested: int | None, cap: int, room: int, reserve: int = 0) -> int:
    """Answer tokens to ask the model for: what the request asked, never more than the
    operator's cap (``HAVEN_CHAT_MAX_ANSWER_TOKENS``) nor than the context leaves once
    ``reserve`` (the best passage) is kept: a long answer asked for must not push every
    source out of the prompt, or the answer comes without any."""
    return min(requested or cap, cap, max(MIN_ANSWER_TOKENS, room - reserve))


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
        raise errors.Unavailable(
            "the generation service is busy or down; retry shortly",
            retry_after=exc.retry_after,
            code="llm.unavailable",
        ) from exc
    except LlmRejected as exc:
        log.warning("chat.llm_rejected", error=str(exc))
        raise errors.UpstreamFailed(
            "the generation service refused to count the prompt", code="llm.rejected"
        ) from exc
    counts = counted.counts
    history_counts = counts[2 : 2 + len(request.history)]
    passage_counts = counts[2 + len(request.history) :]

    context = counted.context_length
    fixed = (counts[0] + counts[1] + 2 * TEMPLATE_TOKENS_PER_MESSAGE + TEMPLATE_TOKENS_BASE) + (
        LABEL_TOKENS if request.rag else 0
    )
    if context - fixed < MIN_ANSWER_TOKENS:
        raise errors.Invalid(
            f"the question takes {counts[1]} tokens, too many for the model's context of"
            f" {context} tokens",
            code="chat.question_too_long",
        )
    limits = passage_limits(context)
    if limits.compact:
        order = by_question_terms(request.question, passages)
        passages = [passages[i] for i in order]
        passage_counts = [passage_counts[i] for i in order]
    passages = passages[: limits.count]
    passage_counts = passage_counts[: limits.count]
    if limits.tokens is not None:
        shortened = [
            shorten(p.text, n, limits.tokens) for p, n in zip(passages, passage_counts, strict=True)
        ]
        passages = [replace(p, text=text) for p, (text, _) in zip(passages, shortened, strict=True)]
        passage_counts = [n for _, n in shortened]
    reserve = passage_counts[0] if passage_counts else 0
    answer_tokens = answer_budget(
        request.max_tokens, settings.chat_max_answer_tokens, context - fixed, reserve=reserve
    )
    room = context - fixed - answer_tokens
    # The conversation gives way to the best passage too: a client that sends a long history
    # with long instructions must not get an answer without any source.
    history = keep_history(
        request.history, history_counts, min(room - reserve, int(context * HISTORY_SHARE))
    )
    # The kept turns are the newest ones: a suffix of the history.
    kept_counts = history_counts[len(history_counts) - len(history) :] if history else []
    room -= sum(c + TEMPLATE_TOKENS_PER_MESSAGE for c in kept_counts)

    kept = pack(passages, passage_counts, room)
    if passages and not kept and room >= MIN_PASSAGE_TOKENS:
        # Not even the best passage fits whole (the instructions took the context): it is
        # offered cut to what is left rather than not at all.
        text, tokens = shorten(passages[0].text, passage_counts[0], room)
        passages[0], passage_counts[0], kept = replace(passages[0], text=text), tokens, [0]
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
    blocks = [
        source_block(s.n, passages[i], limits.compact) for s, i in zip(sources, kept, strict=True)
    ]
    messages = [
        {"role": "system", "content": instructions},
        *({"role": t.role, "content": t.content} for t in history),
        {"role": "user", "content": user_content(request.question, blocks, request.rag)},
    ]
    sampling = Sampling(
        max_tokens=answer_tokens,
        temperature=settings.chat_temperature
        if request.temperature is None
        else request.temperature,
        seed=request.seed,
        top_p=request.top_p,
        stop=request.stop,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
    )
    key = cache_key(
        tenant_id,
        request.question,
        counted.identity,
        [chunk_hash(s.chunk_id, s.text) for s in sources],
        _prompt_hash(instructions, history, request.rag),
        sampling.body(),
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
        sampling=sampling,
        model=f"{counted.model}:{counted.version}",
        cache_key=key if settings.answer_cache_ttl_seconds > 0 else None,
        cached=cached,
        reason=reason,
        rag=request.rag,
        question=request.question,
    )


def citations_of(text: str, sources: list[Source]) -> list[Citation]:
    """Every source offered, each marked with whether the answer cites it: by its ``[n]``
    markers or, when it has none (small models seldom write them), by the passages its
    sentences draw on (``grounding.attribute``)."""
    cited = set(cited_numbers(text, len(sources)))
    by: Literal["marker", "overlap"] = "marker"
    if not cited and visible(text):
        material = [" ".join(p for p in (s.title, s.heading, s.text) if p) for s in sources]
        cited = {sources[i].n for i in attribute(text, material)}
        by = "overlap"
    return [Citation.quoting(s, cited_by=by if s.n in cited else None) for s in sources]


def visible(text: str) -> bool:
    """Whether a user would see anything: not only whitespace or chat-template markers."""
    return bool(_TEMPLATE_MARKERS.sub("", text).strip())


def empty_answer_notice(sources: Sequence[Source]) -> str:
    if not sources:
        return f"{EMPTY_NOTICE} No passage of the documents matched it either."
    lines = [f"{EMPTY_NOTICE} The passages found for it, which may hold the answer:"]
    for s in sources:
        where = s.title or "untitled"
        if s.page is not None:
            where += f", page {s.page}"
        if s.heading:
            where += f" — {s.heading}"
        lines.append(f"[{s.n}] {where}")
    return "\n".join(lines)


def grounding_of(text: str, prepared: PreparedAnswer) -> Grounding | None:
    if not prepared.rag:
        return None
    material = [
        part for s in prepared.sources for part in (s.text, s.title or "", s.heading or "") if part
    ]
    return check(text, material, prepared.question)


def finish(
    text: str, finish_reason: str, usage: UsageRead, prepared: PreparedAnswer, cached: bool
) -> AnswerDone:
    """The end of an answer, with its citations and grounding from this request's sources."""
    if not visible(text):
        notice = empty_answer_notice(prepared.sources)
        return AnswerDone(
            text=notice,
            finish_reason="empty",
            usage=usage,
            citations=citations_of("", prepared.sources),
            cached=cached,
            grounding=grounding_of("", prepared),
            notice=notice,
        )
    return AnswerDone(
        text=text,
        finish_reason="stop" if finish_reason == "stop" else "length",
        usage=usage,
        citations=citations_of(text, prepared.sources),
        cached=cached,
        grounding=grounding_of(text, prepared),
    )


async def generate(
    runtime: ApiRuntime, tenant_id: uuid.UUID, prepared: PreparedAnswer
) -> AsyncIterator[AnswerEvent]:
    cached = prepared.cached
    if cached is not None and visible(cached.text):
        yield AnswerToken(cached.text)
        # The grounding check reads every source: off the event loop.
        yield await asyncio.to_thread(
            finish,
            cached.text,
            cached.finish_reason,
            UsageRead.model_validate(cached.usage),
            prepared,
            cached=True,
        )
        return

    parts: list[str] = []
    try:
        async for event in runtime.llm.stream_chat(
            prepared.messages, prepared.sampling, tenant=str(tenant_id)
        ):
            if isinstance(event, Delta):
                parts.append(event.text)
                yield AnswerToken(event.text)
            elif isinstance(event, Completed):
                text = "".join(parts)
                done = await asyncio.to_thread(
                    finish,
                    text,
                    event.finish_reason,
                    UsageRead(
                        prompt_tokens=event.prompt_tokens,
                        completion_tokens=event.completion_tokens,
                        total_tokens=event.prompt_tokens + event.completion_tokens,
                    ),
                    prepared,
                    cached=False,
                )
                if done.notice is not None:
                    log.warning("chat.answer.empty", model=prepared.model, text=text[:200])
                    # The notice reaches the reader the way the answer would have.
                    yield AnswerToken(("\n\n" if parts else "") + done.notice)
                else:
                    await _remember(runtime, tenant_id, prepared, done)
                yield done
                return
    except LlmUnavailable as exc:
        yield AnswerFailed(
            errors.Unavailable(
                "the generation service is busy or down; retry shortly",
                retry_after=exc.retry_after,
                code="llm.unavailable",
            )
        )
    except LlmRejected as exc:
        log.warning("chat.llm_rejected", error=str(exc))
        yield AnswerFailed(
            errors.UpstreamFailed("the generation service refused the prompt", code="llm.rejected")
        )


async def _remember(
    runtime: ApiRuntime, tenant_id: uuid.UUID, prepared: PreparedAnswer, done: AnswerDone
) -> None:
    if prepared.cache_key is None:
        return
    answer = CachedAnswer(
        text=done.text,
        usage=done.usage.model_dump(),
        finish_reason=done.finish_reason,
        document_ids=sorted({str(s.document_id) for s in prepared.sources}),
    )
    try:
        await runtime.answers.put(prepared.cache_key, tenant_id, answer)
    except redis.RedisError as exc:
        log.warning("chat.cache_unavailable", error=str(exc))
