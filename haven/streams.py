"""A cap on concurrent answer streams per caller and per tenant, with leases in Redis.

Each open stream is a member of two sorted sets (the tenant's and the caller's) scored by
its lease's end. Opening one is one Lua script: drop the expired members, refuse when either
set is at its cap, add to both. The process that serves the stream renews the leases of its
open streams every third of the lease (``StreamLeases.renew_all``) and removes the member
when the stream ends, however it ends; when the process dies its members expire within one
lease, so a crash never holds a caller's streams for long.

If Redis is away, streams are let through (the cap protects capacity; an answer is worth
more than the cap) and a warning is logged.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import redis
import redis.asyncio as aredis
import structlog

from haven.errors import LimitExceeded

log = structlog.get_logger("haven.streams")

# KEYS: tenant set, caller set. ARGV: now_ms, lease_ms, tenant cap, caller cap, member.
# Returns {opened, tenant open, caller open, refused scope index (0 none, 1 tenant, 2 caller)}.
_OPEN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
local caps = {tonumber(ARGV[2]), tonumber(ARGV[3])}
local counts = {}
for i = 1, 2 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  counts[i] = redis.call('ZCARD', KEYS[i])
end
for i = 1, 2 do
  if counts[i] >= caps[i] then return {0, counts[1], counts[2], i} end
end
for i = 1, 2 do
  redis.call('ZADD', KEYS[i], now + lease, ARGV[4])
  redis.call('PEXPIRE', KEYS[i], lease * 2)
end
return {1, counts[1] + 1, counts[2] + 1, 0}
"""

_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', now + lease, ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], lease * 2)
end
return #KEYS
"""


class TooManyStreams(LimitExceeded):
    code = "streams.too_many"

    def __init__(self, scope: str, cap: int, retry_after: float) -> None:
        who = "the tenant has" if scope == "tenant" else "this caller has"
        super().__init__(
            f"{who} {cap} answers streaming already, the most allowed at once; wait for one to end",
            retry_after=retry_after,
            code=self.code,
        )
        self.details = {"reason": "streams", "scope": scope, "cap": cap}


@dataclass(frozen=True)
class StreamLease:
    member: str
    keys: tuple[str, str]


class StreamLeases:
    """The open streams of this process."""

    def __init__(
        self, client: aredis.Redis, lease_seconds: float, prefix: str = "haven:streams"
    ) -> None:
        self.client = client
        self.lease_ms = max(100, int(lease_seconds * 1000))
        self.prefix = prefix
        self._open_script = client.register_script(_OPEN)
        self._renew_script = client.register_script(_RENEW)
        self.held: dict[str, StreamLease] = {}

    async def open(
        self, tenant_id: uuid.UUID, caller: str, *, tenant_cap: int, caller_cap: int
    ) -> StreamLease | None:
        """A lease on one more stream, ``TooManyStreams`` over a cap, None without Redis."""
        keys = (f"{self.prefix}:tenant:{tenant_id}", f"{self.prefix}:caller:{caller}")
        member = uuid.uuid4().hex
        try:
            opened, _, _, refused = await self._open_script(
                keys=list(keys), args=[self.lease_ms, tenant_cap, caller_cap, member]
            )
        except redis.RedisError as exc:
            log.warning("streams.unavailable", error=str(exc))
            return None
        if not opened:
            scope = "tenant" if int(refused) == 1 else "caller"
            cap = tenant_cap if scope == "tenant" else caller_cap
            raise TooManyStreams(scope, cap, retry_after=1.0)
        lease = StreamLease(member, keys)
        self.held[member] = lease
        return lease

    async def close(self, lease: StreamLease | None) -> None:
        if lease is None:
            return
        self.held.pop(lease.member, None)
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for key in lease.keys:
                    pipe.zrem(key, lease.member)
                await pipe.execute()
        except redis.RedisError as exc:  # it expires with its lease
            log.warning("streams.unavailable", error=str(exc))

    async def renew_all(self) -> None:
        leases = list(self.held.values())
        if not leases:
            return
        keys = [key for lease in leases for key in lease.keys]
        members = [lease.member for lease in leases for _ in lease.keys]
        await self._renew_script(keys=keys, args=[self.lease_ms, *members])
