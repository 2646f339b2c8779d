"""An answer's tokens against the tenant's budget: reserved before llm is called, settled to
llm's count when the answer ends, however it ends.

``reserve`` runs once the prompt is known (``prepare``) and before anything is stored or
streamed: a cached answer reserves nothing (it costs nothing); any other reserves the exact
length of the rendered prompt (llm's ``/tokenize`` of the messages) plus the most answer
tokens it may generate, or raises ``BudgetExceeded`` (429). ``track`` watches the answer's
events; ``measure`` works out what was used: llm's own count for a finished answer, the
prompt plus the tokens of the text sent for one whose client left, nothing for one that
never started generating (its tokens are given back); ``settle_in`` charges it and writes
the usage ledger row in the caller's transaction (the chat stores its message in the same).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import structlog
from sqlalchemy.orm import Session

from api.chat.answer import (
    AnswerDone,
    AnswerEvent,
    AnswerFailed,
    AnswerToken,
    PreparedAnswer,
    visible,
)
from api.runtime import ApiRuntime
from haven import errors
from haven.auth.principal import Principal
from haven.budget import Reservation
from haven.db.tables import UsageEntry
from haven.llm_client import LlmRejected, LlmUnavailable

log = structlog.get_logger("haven.chat")
# How long counting an interrupted answer's text may take before one token a delta is used.
COUNT_SECONDS = 3.0


def _is_cached(prepared: PreparedAnswer) -> bool:
    return prepared.cached is not None and visible(prepared.cached.text)


@dataclass
class Meter:
    runtime: ApiRuntime
    principal: Principal
    kind: str
    request_id: str | None
    started: float
    reservation: Reservation | None = None
    prompt_tokens: int = 0
    parts: list[str] = field(default_factory=list)
    done: AnswerDone | None = None
    failed: AnswerFailed | None = None
    # Worked out by ``measure``: (prompt, completion) tokens used, or None when nothing ran.
    used: tuple[int, int] | None = None
    settled: bool = False

    @property
    def user_id(self) -> uuid.UUID | None:
        return self.principal.subject_id if self.principal.kind == "user" else None

    @property
    def api_key_id(self) -> uuid.UUID | None:
        return self.principal.subject_id if self.principal.kind == "api_key" else None

    async def reserve(self, prepared: PreparedAnswer) -> None:
        if _is_cached(prepared):
            return
        try:
            counted = await self.runtime.llm.count_tokens([], messages=prepared.messages)
        except LlmUnavailable as exc:
            raise errors.Unavailable(
                "the generation service is busy or down; retry shortly",
                retry_after=exc.retry_after,
                code="llm.unavailable",
            ) from exc
        except LlmRejected as exc:
            raise errors.UpstreamFailed(
                "the generation service refused to count the prompt", code="llm.rejected"
            ) from exc
        self.prompt_tokens = counted.prompt_tokens or sum(counted.counts)
        self.reservation = await self.runtime.in_db_thread(
            self._reserve, self.prompt_tokens + prepared.answer_tokens
        )

    def _reserve(self, tokens: int) -> Reservation:
        try:
            return self.runtime.quotas.budget.reserve(
                self.principal.tenant_id, tokens, kind=self.kind, request_id=self.request_id
            )
        except errors.LimitExceeded:
            self.runtime.quotas.refusals.labels("budget").inc()
            raise

    async def release(self) -> None:
        """Give the reservation back: the request ended before it asked llm anything."""
        if self.reservation is not None and not self.settled:
            self.settled = True
            await self.runtime.in_db_thread(self.runtime.quotas.budget.release, self.reservation)

    async def track(self, events: AsyncIterator[AnswerEvent]) -> AsyncIterator[AnswerEvent]:
        async for event in events:
            if isinstance(event, AnswerToken):
                self.parts.append(event.text)
            elif isinstance(event, AnswerDone):
                self.done = event
            else:
                self.failed = event
            yield event

    async def measure(self) -> None:
        """What the answer used, llm's count when it finished; for an answer cut short, the
        prompt plus the tokens of what was sent (counted by llm, or one a delta if llm cannot
        be reached). Runs on the event loop, before ``settle_in``."""
        if self.reservation is None:
            return
        if self.done is not None:
            self.used = (self.done.usage.prompt_tokens, self.done.usage.completion_tokens)
            return
        if not self.parts:
            return  # llm never started answering: nothing to charge
        text = "".join(self.parts)
        completion = len(self.parts)
        try:
            # Bounded: this runs while the stream closes, which has a time limit of its own.
            counted = await asyncio.wait_for(self.runtime.llm.count_tokens([text]), COUNT_SECONDS)
            completion = counted.counts[0]
        except (LlmUnavailable, LlmRejected, TimeoutError) as exc:
            log.warning("chat.meter.count_failed", error=str(exc))
        assert self.reservation is not None
        cap = max(0, self.reservation.tokens - self.prompt_tokens)
        self.used = (self.prompt_tokens, min(completion, cap))

    def settle_in(self, session: Session, finished_at: float) -> None:
        """Charge what was used and write the usage ledger row, in ``session``'s
        transaction."""
        if self.settled:
            return
        self.settled = True
        latency_ms = int((finished_at - self.started) * 1000)
        quotas = self.runtime.quotas
        if self.reservation is None:
            if self.done is not None and self.done.cached:
                # A cached answer costs the model nothing.
                session.add(
                    UsageEntry(
                        tenant_id=self.principal.tenant_id,
                        user_id=self.user_id,
                        api_key_id=self.api_key_id,
                        kind=f"{self.kind}.cached",
                        prompt_tokens=0,
                        completion_tokens=0,
                        latency_ms=latency_ms,
                        request_id=self.request_id,
                    )
                )
            return
        if self.used is None:
            quotas.budget.release_in(session, self.reservation)
            if self.failed is None:
                return  # the client left before llm started: no request to record
            prompt, completion = 0, 0
        else:
            prompt, completion = self.used
        error = None
        if self.failed is not None:
            error = self.failed.error.code
        elif self.done is None:
            error = "interrupted"
        if self.used is not None:
            quotas.budget.settle_in(
                session,
                self.reservation,
                prompt_tokens=prompt,
                completion_tokens=completion,
                latency_ms=latency_ms,
                user_id=self.user_id,
                api_key_id=self.api_key_id,
                error=error,
            )
            quotas.count_tokens(self.principal.tenant_id, prompt, completion)
        else:
            session.add(
                UsageEntry(
                    tenant_id=self.principal.tenant_id,
                    user_id=self.user_id,
                    api_key_id=self.api_key_id,
                    kind=self.kind,
                    prompt_tokens=0,
                    completion_tokens=0,
                    latency_ms=latency_ms,
                    request_id=self.request_id,
                    error=error,
                )
            )
