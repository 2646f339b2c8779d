"""Every call the analyze pipeline makes to the generation service goes through here.

``AnalyzeLlm.complete`` is the one function that asks the model to generate: it waits out a
busy service (503/429 → backoff, honouring ``Retry-After``, without failing the job), stops
the generation as soon as the job is canceled (it checks between streamed tokens and closes
the stream, which frees the service's slot), and records the call's token usage in the
tenant's usage ledger. A per-tenant token budget reserves its tokens here, before the call.

``AnalyzeLlm.tokens`` counts tokens with the model's own tokenizer (``/tokenize``) and tells
which model is served (its identity keys the stored steps). Both use the chat's client
(``haven.llm_client``), on an event loop of the run's own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from haven.auth.principal import Principal
from haven.db.tables import Role
from haven.llm_client import (
    AsyncLlmClient,
    Completed,
    Delta,
    LlmUnavailable,
    Sampling,
    TokenCounts,
)
from workers.jobs.heartbeat import Heartbeat, JobCanceled, JobLost
from workers.runtime import WorkerRuntime

log = structlog.get_logger("haven.analyze")

T = TypeVar("T")

USAGE_KIND = "analyze"
# /tokenize takes at most this many texts and characters per request (haven.contracts.llm).
TOKENIZE_TEXTS = 1000
TOKENIZE_CHARS = 1_500_000
# Waits between attempts at a busy service: doubled from the first up to the last.
FIRST_WAIT = 0.5
LONGEST_WAIT = 30.0
# How often a wait looks for a cancel.
WAIT_SLICE = 0.25


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class AnalyzeLlm:
    """The generation service as one analysis run sees it."""

    def __init__(
        self,
        rt: WorkerRuntime,
        beat: Heartbeat,
        principal: Principal,
        *,
        request_id: str,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rt = rt
        self.beat = beat
        self.principal = principal
        self.request_id = request_id
        self.settings = rt.settings
        self._sleep = sleep
        self._loop = asyncio.new_event_loop()
        self._client = AsyncLlmClient(
            self.settings.llm_url, timeout=self.settings.llm_timeout_seconds
        )
        self.calls = 0  # generations this run started
        self.waits = 0  # times it waited out a busy service

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.run_until_complete(self._client.aclose())
        self._loop.close()

    # --- stopping ---------------------------------------------------------------------------

    def _stop_if_asked(self) -> None:
        """Between streamed tokens: the cancels this process heard (no round trip), and
        what the lease keeper learnt from PostgreSQL."""
        beat = self.beat
        if beat.expired or getattr(beat, "_heard", None) == "lost":
            raise JobLost()
        if getattr(beat, "_heard", None) == "cancel" or beat.cancels.canceled(beat.job_id):
            raise JobCanceled()

    def _wait(self, seconds: float) -> None:
        """Wait out a busy service, still stopping at once on a cancel."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.beat()  # renews the lease, raises on cancel
            self._sleep(min(WAIT_SLICE, left))

    def _patiently(self, attempt: Callable[[], T], what: str) -> T:
        """``attempt`` until the service takes it; backpressure never fails the job unless
        it lasts longer than ``analyze_llm_wait_seconds`` (then the runner retries it)."""
        started = time.monotonic()
        wait = FIRST_WAIT
        while True:
            try:
                return attempt()
            except LlmUnavailable as exc:
                # Failed attempts count too (a generation the service timed out).
                if time.monotonic() - started >= self.settings.analyze_llm_wait_seconds:
                    raise
                pause = min(max(exc.retry_after or 0.0, wait), LONGEST_WAIT)
                self.waits += 1
                log.info("analyze.llm_busy", what=what, wait_s=round(pause, 2), error=str(exc))
                self._wait(pause)
                wait = min(wait * 2, LONGEST_WAIT)

    # --- calls ------------------------------------------------------------------------------

    def tokens(self, texts: list[str], messages: list[dict[str, str]] | None = None) -> TokenCounts:
        """Token counts in the served model's tokenizer (and, with ``messages``, of the
        chat prompt they render to), in as many requests as the service's limits need."""
        batches: list[list[str]] = [[]]
        size = 0
        for text in texts:
            if batches[-1] and (
                len(batches[-1]) >= TOKENIZE_TEXTS or size + len(text) > TOKENIZE_CHARS
            ):
                batches.append([])
                size = 0
            batches[-1].append(text)
            size += len(text)
        counts: list[int] = []
        first: TokenCounts | None = None
        for number, batch in enumerate(batches):
            wanted = messages if number == 0 else None
            found = self._patiently(functools.partial(self._count, batch, wanted), "tokenize")
            first = first or found
            counts.extend(found.counts)
        assert first is not None
        return TokenCounts(
            model=first.model,
            version=first.version,
            context_length=first.context_length,
            counts=counts,
            prompt_tokens=first.prompt_tokens,
            name=first.name,
            sha256=first.sha256,
        )

    def _count(self, texts: list[str], messages: list[dict[str, str]] | None) -> TokenCounts:
        return self._loop.run_until_complete(self._client.count_tokens(texts, messages))

    def complete(self, messages: list[dict[str, str]], sampling: Sampling) -> Generation:
        """THE generation call of the pipeline: one answer to ``messages``. Reserves the
        prompt and answer tokens against the tenant's budget first (``BudgetExceeded`` stops
        the job as ``budget``; the stored steps make a retry resume), waits out a busy
        service, stops on a cancel within this call, and settles the real usage (which
        writes the usage ledger row)."""
        self._stop_if_asked()
        prompt_tokens = self.tokens([], messages).prompt_tokens or 0
        budget = self.rt.budget
        held = budget.reserve(
            self.principal.tenant_id,
            prompt_tokens + sampling.max_tokens,
            kind=USAGE_KIND,
            request_id=self.request_id,
        )
        started = time.monotonic()
        try:
            generation = self._patiently(
                lambda: self._loop.run_until_complete(self._stream(messages, sampling)),
                "generate",
            )
        except BaseException:
            budget.release(held)  # nothing came back: nothing is charged
            raise
        budget.settle(
            held,
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
            latency_ms=int((time.monotonic() - started) * 1000),
            user_id=self.principal.subject_id if self.principal.kind == "user" else None,
            kind=USAGE_KIND,
        )
        return generation

    async def _stream(self, messages: list[dict[str, str]], sampling: Sampling) -> Generation:
        self.calls += 1
        parts: list[str] = []
        stream = self._client.stream_chat(messages, sampling)
        async with contextlib.aclosing(stream) as events:  # type: ignore[type-var]
            async for event in events:
                if isinstance(event, Delta):
                    parts.append(event.text)
                    # Leaving the loop closes the stream: the service stops generating.
                    self._stop_if_asked()
                elif isinstance(event, Completed):
                    return Generation(
                        "".join(parts),
                        event.finish_reason,
                        event.prompt_tokens,
                        event.completion_tokens,
                    )
        raise LlmUnavailable("the generation stream ended without finishing")


def run_principal(tenant_id: uuid.UUID, user_id: uuid.UUID | None, job_id: uuid.UUID) -> Principal:
    """Whom an analysis's usage is charged to: the user who asked for it, else the tenant's
    applications (an API key asked)."""
    if user_id is not None:
        return Principal(subject_id=user_id, tenant_id=tenant_id, role=Role.EDITOR, kind="user")
    return Principal(subject_id=job_id, tenant_id=tenant_id, role=Role.EDITOR, kind="api_key")
