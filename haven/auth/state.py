"""Tokens checked against the caller's current state, cheaply.

A token says who the caller was when it was issued. Every request also compares it with what
the caller is now: the user active, their role and their *token version* unchanged (a per-user
counter in PostgreSQL, raised by a password change, a disable or a role change), the API key
not revoked or expired, the tenant active. PostgreSQL is the truth; Redis keeps a copy per
caller and per tenant so that a request costs one ``MGET``, not a database round trip.

* A change writes the new state to Redis as soon as its transaction commits (plain ``SET``),
  so the very next request sees it. A copy read from PostgreSQL is written with ``SET NX``,
  so a request that read the old row just before the change can never overwrite it.
* Redis loses nothing that matters: a missing copy, or Redis unreachable, means reading
  PostgreSQL. Copies expire after ``auth_state_ttl_seconds``, which bounds the one case
  Redis could be wrong: a change made while Redis was unreachable, after which Redis came
  back with its old contents.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass

import redis
import redis.asyncio as aredis
import structlog
from sqlalchemy import event
from sqlalchemy.orm import Session

from haven.auth.principal import Principal
from haven.db.tables import ApiKey, Tenant, User

log = structlog.get_logger("haven.auth")

PREFIX = "haven:auth"
_PENDING = "haven.auth.pending_states"


@dataclass(frozen=True, slots=True)
class CallerState:
    """What a user or an API key is allowed now. ``until`` is a key's expiry (epoch seconds)."""

    active: bool
    role: str | None = None
    version: int = 0
    until: float | None = None

    def dumps(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def loads(cls, raw: bytes | str) -> CallerState:
        return cls(**json.loads(raw))

    @classmethod
    def of_user(cls, user: User | None) -> CallerState:
        if user is None:
            return cls(active=False)
        return cls(active=user.is_active, role=user.role.value, version=user.token_version)

    @classmethod
    def of_api_key(cls, key: ApiKey | None) -> CallerState:
        if key is None or key.revoked_at is not None:
            return cls(active=False)
        until = key.expires_at.timestamp() if key.expires_at is not None else None
        return cls(active=True, role=key.role.value, until=until)


def subject_key(kind: str, subject_id: uuid.UUID | str) -> str:
    return f"{PREFIX}:{kind}:{subject_id}"


def tenant_key(tenant_id: uuid.UUID | str) -> str:
    return f"{PREFIX}:tenant:{tenant_id}"


def _tenant_value(active: bool) -> str:
    return "1" if active else "0"


@dataclass(frozen=True, slots=True)
class Refusal:
    code: str
    message: str


def refusal(principal: Principal, state: CallerState, tenant_active: bool) -> Refusal | None:
    """Why this token may no longer be used, or None when it may."""
    if not tenant_active:
        return Refusal("tenant.disabled", "your tenant is disabled")
    if principal.kind == "api_key":
        if not state.active:
            return Refusal("api_key.revoked", "API key has been revoked")
        if state.until is not None and state.until <= time.time():
            return Refusal("api_key.expired", "API key has expired")
        if state.role != principal.role.value:
            return Refusal("session.ended", "the API key's role changed; exchange it again")
        return None
    if not state.active:
        return Refusal("account.disabled", "account is disabled or deleted")
    if state.version != principal.version or state.role != principal.role.value:
        return Refusal(
            "session.ended", "this session has ended (password or role changed); sign in again"
        )
    return None


def load(session: Session, principal: Principal) -> tuple[CallerState, bool]:
    """The caller's state and whether their tenant is active, from PostgreSQL."""
    if principal.kind == "api_key":
        state = CallerState.of_api_key(session.get(ApiKey, principal.subject_id))
    else:
        state = CallerState.of_user(session.get(User, principal.subject_id))
    tenant = session.get(Tenant, principal.tenant_id)
    return state, tenant is not None and tenant.is_active


class AuthStates:
    def __init__(self, client: aredis.Redis, sync_client: redis.Redis, ttl_seconds: int) -> None:
        self.client = client
        self.sync_client = sync_client
        self.ttl = ttl_seconds

    async def cached(self, principal: Principal) -> tuple[CallerState, bool] | None:
        """The copy in Redis; None when either half is missing or Redis does not answer."""
        try:
            subject, tenant = await self.client.mget(
                subject_key(principal.kind, principal.subject_id), tenant_key(principal.tenant_id)
            )
        except redis.RedisError as exc:
            log.warning("auth.state.redis_unavailable", error=str(exc))
            return None
        if subject is None or tenant is None:
            return None
        try:
            return CallerState.loads(subject), tenant in (b"1", "1")
        except (ValueError, TypeError):  # written by another version: read PostgreSQL
            return None

    async def remember(self, principal: Principal, state: CallerState, tenant_active: bool) -> None:
        """Keep a copy read from PostgreSQL, unless a change has written a newer one."""
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.set(
                    subject_key(principal.kind, principal.subject_id),
                    state.dumps(),
                    ex=self.ttl,
                    nx=True,
                )
                pipe.set(
                    tenant_key(principal.tenant_id),
                    _tenant_value(tenant_active),
                    ex=self.ttl,
                    nx=True,
                )
                await pipe.execute()
        except redis.RedisError as exc:
            log.warning("auth.state.redis_unavailable", error=str(exc))

    def publish_after_commit(
        self,
        session: Session,
        *,
        subjects: dict[tuple[str, uuid.UUID], CallerState] | None = None,
        tenants: dict[uuid.UUID, bool] | None = None,
    ) -> None:
        """Write these states to Redis once ``session`` commits (nothing if it rolls back)."""
        pending: dict[str, str] | None = session.info.get(_PENDING)
        if pending is None:
            pending = session.info[_PENDING] = {}
            event.listen(session, "after_commit", self._flush)
            event.listen(session, "after_rollback", _discard)
        for (kind, subject_id), state in (subjects or {}).items():
            pending[subject_key(kind, subject_id)] = state.dumps()
        for tenant_id, active in (tenants or {}).items():
            pending[tenant_key(tenant_id)] = _tenant_value(active)

    def _flush(self, session: Session) -> None:
        pending: dict[str, str] = session.info.pop(_PENDING, None) or {}
        session.info[_PENDING] = {}
        if not pending:
            return
        try:
            pipe = self.sync_client.pipeline(transaction=False)
            for key, value in pending.items():
                pipe.set(key, value, ex=self.ttl)
            pipe.execute()
        except redis.RedisError as exc:
            # PostgreSQL has the change; Redis' copies expire within the TTL.
            log.warning("auth.state.publish_failed", keys=len(pending), error=str(exc))


def _discard(session: Session) -> None:
    if session.info.get(_PENDING):
        session.info[_PENDING] = {}
