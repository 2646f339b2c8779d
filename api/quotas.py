"""What the API enforces before it lets a request use llm: the tenant's token budget
(``haven.budget``), request rates per tenant and per caller (``haven.ratelimit``) and the cap on
concurrent answer streams (``haven.streams``); and the Prometheus counters of tokens per tenant.

Order of checks: the rate limit as soon as the caller is known (``api.deps``), for every
authenticated request; the stream cap before a streaming answer prepares anything; the budget
once the prompt is known, before anything is stored or streamed. Each refusal is a 429 with a
JSON ``reason`` (``rate``, ``streams``, ``budget``) and ``Retry-After``.

A tenant's limits are ``tenants.limits`` over the platform defaults (``ApiSettings``), read
again at most every ``HAVEN_TENANT_LIMITS_TTL_SECONDS``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aredis
import structlog
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.settings import ApiSettings
from haven.auth.principal import Principal
from haven.budget import TokenBudget
from haven.db.engine import transaction
from haven.db.tables import Tenant
from haven.ratelimit import Rate, RateDecision, RateLimited, RateLimiter
from haven.streams import StreamLease, StreamLeases

log = structlog.get_logger("haven.quotas")


class TenantLimits(BaseModel):
    """A tenant's own limits; a field left out takes the platform default."""

    model_config = ConfigDict(extra="forbid")

    requests_per_second: float | None = Field(default=None, gt=0, le=100_000)
    burst: int | None = Field(default=None, ge=1, le=1_000_000)
    caller_requests_per_second: float | None = Field(default=None, gt=0, le=100_000)
    caller_burst: int | None = Field(default=None, ge=1, le=1_000_000)
    streams: int | None = Field(default=None, ge=1, le=100_000)
    caller_streams: int | None = Field(default=None, ge=1, le=100_000)


@dataclass(frozen=True)
class EffectiveLimits:
    tenant_rate: Rate
    caller_rate: Rate
    streams: int
    caller_streams: int

    @classmethod
    def of(cls, own: TenantLimits, settings: ApiSettings) -> EffectiveLimits:
        return cls(
            tenant_rate=Rate(
                own.requests_per_second or settings.rate_tenant_per_second,
                own.burst or settings.rate_tenant_burst,
            ),
            caller_rate=Rate(
                own.caller_requests_per_second or settings.rate_caller_per_second,
                own.caller_burst or settings.rate_caller_burst,
            ),
            streams=own.streams or settings.streams_per_tenant,
            caller_streams=own.caller_streams or settings.streams_per_caller,
        )


def caller_key(principal: Principal) -> str:
    return f"{principal.kind}:{principal.subject_id}"


@dataclass
class Quotas:
    settings: ApiSettings
    budget: TokenBudget
    limiter: RateLimiter
    streams: StreamLeases
    tokens: Counter
    refusals: Counter
    _limits: dict[uuid.UUID, tuple[float, EffectiveLimits]] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    @classmethod
    def build(
        cls,
        settings: ApiSettings,
        factory: sessionmaker[Session],
        client: aredis.Redis,
        registry: CollectorRegistry,
    ) -> Quotas:
        return cls(
            settings=settings,
            budget=TokenBudget(
                factory,
                period_seconds=settings.budget_period_seconds,
                lease_seconds=settings.budget_lease_seconds,
            ),
            limiter=RateLimiter(client),
            streams=StreamLeases(client, settings.stream_lease_seconds),
            tokens=Counter(
                "haven_llm_tokens",
                "Tokens charged to tenants' budgets for llm calls, by tenant and kind",
                ["tenant_id", "kind"],
                registry=registry,
            ),
            refusals=Counter(
                "haven_quota_refusals",
                "Requests refused with 429 by a quota, by reason (rate, streams, budget)",
                ["reason"],
                registry=registry,
            ),
        )

    # -- tenant limits --------------------------------------------------------------------

    def _load_limits(self, tenant_id: uuid.UUID) -> TenantLimits:
        with transaction(self.budget.factory) as session:
            own = session.execute(select(Tenant.limits).where(Tenant.id == tenant_id)).scalar()
        return TenantLimits.model_validate(own or {})

    async def limits(
        self, tenant_id: uuid.UUID, run: Callable[..., Awaitable[TenantLimits]]
    ) -> EffectiveLimits:
        now = time.monotonic()
        cached = self._limits.get(tenant_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        effective = EffectiveLimits.of(await run(self._load_limits, tenant_id), self.settings)
        self._limits[tenant_id] = (now + self.settings.tenant_limits_ttl_seconds, effective)
        return effective

    def forget_limits(self, tenant_id: uuid.UUID) -> None:
        self._limits.pop(tenant_id, None)

    # -- rates and streams ----------------------------------------------------------------

    async def check_rate(
        self, principal: Principal, limits: EffectiveLimits
    ) -> RateDecision | None:
        """Count one request; ``RateLimited`` when over. None when Redis is away (let
        through: the limits protect capacity, and losing Redis must not stop Haven)."""
        try:
            decision = await self.limiter.hit(
                [
                    ("tenant", str(principal.tenant_id), limits.tenant_rate),
                    ("caller", caller_key(principal), limits.caller_rate),
                ]
            )
        except redis.RedisError as exc:
            log.warning("quotas.rate.unavailable", error=str(exc))
            return None
        if not decision.allowed:
            self.refusals.labels("rate").inc()
            raise RateLimited(decision)
        return decision

    async def open_stream(
        self, principal: Principal, limits: EffectiveLimits
    ) -> StreamLease | None:
        try:
            return await self.streams.open(
                principal.tenant_id,
                caller_key(principal),
                tenant_cap=limits.streams,
                caller_cap=limits.caller_streams,
            )
        except Exception:
            self.refusals.labels("streams").inc()
            raise

    # -- the keeper -----------------------------------------------------------------------

    def start(self, run_in_thread: Callable[..., Awaitable[object]]) -> None:
        """Renew this process's stream and budget leases, and sweep dead processes'
        reservations, every third of the shorter lease."""
        interval = max(
            0.2, min(self.settings.stream_lease_seconds, self.settings.budget_lease_seconds) / 3
        )

        async def keep() -> None:
            while True:
                await asyncio.sleep(interval)
                try:
                    await self.streams.renew_all()
                except redis.RedisError as exc:
                    log.warning("quotas.streams.renew_failed", error=str(exc))
                try:
                    await run_in_thread(self.budget.maintain)
                except Exception as exc:  # the database is away: the next round retries
                    log.warning("quotas.budget.keeper_failed", error=str(exc))

        self._task = asyncio.create_task(keep(), name="quotas-keeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def count_tokens(self, tenant_id: uuid.UUID, prompt: int, completion: int) -> None:
        self.tokens.labels(str(tenant_id), "prompt").inc(max(0, prompt))
        self.tokens.labels(str(tenant_id), "completion").inc(max(0, completion))


class RateLimitHeaders:
    """Adds the ``RateLimit-*`` headers of the request's rate decision (set by the caller
    check in ``api.deps``) to its response, a refusal's included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                decision: Any = scope.get("state", {}).get("rate_decision")
                if isinstance(decision, RateDecision):
                    headers = list(message.get("headers", []))
                    present = {name.lower() for name, _ in headers}
                    for name, value in decision.headers().items():
                        if name.lower().encode() not in present:
                            headers.append((name.lower().encode(), value.encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
