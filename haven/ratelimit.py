"""Request rate limits per tenant and per caller (user or API key), in Redis, by GCRA.

GCRA (the generic cell rate algorithm, as in redis-cell and Stripe's limiter) keeps one
timestamp per key, the "theoretical arrival time": a request is allowed when it is not more
than ``burst`` emission intervals ahead of now. It is a token bucket with ``rate`` tokens
per second and ``burst`` capacity, exact across API processes because one Lua script checks
and updates both keys atomically with Redis's own clock. A request refused by one key does
not count against the other.

The answer carries what the ``RateLimit-*`` headers (IETF httpapi draft) report: the
policy, what is left of the burst and when it is full again, for the tighter of the keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis.asyncio as aredis

from haven.errors import LimitExceeded

# KEYS: one per limit. ARGV: for each key, its emission interval and burst (microseconds,
# requests). Returns {allowed, retry_after_us, remaining, reset_us, limit_index}.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local worst_remaining, worst_reset, worst_index = nil, 0, 1
local new_tats = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - burst * interval
  if now < allow_at then
    return {0, allow_at - now, 0, tat - now, i}
  end
  new_tats[i] = new_tat
  local remaining = math.floor((now - allow_at) / interval)
  if worst_remaining == nil or remaining < worst_remaining then
    worst_remaining, worst_reset, worst_index = remaining, new_tat - now, i
  end
end
for i = 1, #KEYS do
  local ttl = math.ceil((new_tats[i] - now) / 1000) + 1000
  redis.call('SET', KEYS[i], new_tats[i], 'PX', ttl)
end
return {1, 0, worst_remaining, worst_reset, worst_index}
"""


@dataclass(frozen=True)
class Rate:
    """``per_second`` requests a second, in bursts of up to ``burst``."""

    per_second: float
    burst: int

    @property
    def interval_us(self) -> int:
        return max(1, round(1_000_000 / self.per_second))

    @property
    def window_seconds(self) -> int:
        """The time a full burst takes to come back (the policy's ``w``)."""
        return max(1, math.ceil(self.burst / self.per_second))


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    rate: Rate  # the limit that decided (the tighter one when allowed)
    scope: str  # "tenant" or "caller"
    remaining: int
    reset_seconds: float
    retry_after: float

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.rate.burst),
            "RateLimit-Remaining": str(max(0, self.remaining)),
            "RateLimit-Reset": str(max(0, math.ceil(self.reset_seconds))),
            "RateLimit-Policy": f"{self.rate.burst};w={self.rate.window_seconds};"
            f'comment="{self.scope}"',
        }


class RateLimited(LimitExceeded):
    code = "rate_limited"

    def __init__(self, decision: RateDecision) -> None:
        who = "the tenant" if decision.scope == "tenant" else "this caller"
        super().__init__(
            f"too many requests from {who}: the limit is {decision.rate.per_second:g} a second"
            f" in bursts of {decision.rate.burst}",
            retry_after=decision.retry_after,
            code=self.code,
        )
        self.decision = decision
        self.details = {"reason": "rate", "scope": decision.scope}


class RateLimiter:
    def __init__(self, client: aredis.Redis, prefix: str = "haven:rate") -> None:
        self.client = client
        self.prefix = prefix
        self._script = client.register_script(_GCRA)

    async def hit(self, limits: list[tuple[str, str, Rate]]) -> RateDecision:
        """One request against every ``(scope, key, rate)``; all or none count it."""
        keys = [f"{self.prefix}:{scope}:{key}" for scope, key, _ in limits]
        args: list[int] = []
        for _, _, rate in limits:
            args += [rate.interval_us, max(1, rate.burst)]
        allowed, retry_us, remaining, reset_us, index = await self._script(keys=keys, args=args)
        scope, _, rate = limits[int(index) - 1]
        return RateDecision(
            allowed=bool(allowed),
            rate=rate,
            scope=scope,
            remaining=int(remaining),
            reset_seconds=int(reset_us) / 1_000_000,
            retry_after=int(retry_us) / 1_000_000,
        )
