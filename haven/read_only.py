"""Read-only mode: an operator's platform-wide switch that pauses every write (an upgrade, a
restore, a storage move) while reads, search and answers keep working.

The switch is a row of ``platform_flags`` in PostgreSQL, so it survives restarts and every
process reads the same one. Each process keeps what it read for
``HAVEN_READ_ONLY_CACHE_SECONDS`` (2 s), so every API replica and worker sees a change within
that long without a query per request. Turning it on or off is audited (``platform.read_only``)
in the transaction that changes it, from the API or from ``haven admin read-only``.

What each part does while it is on:

- the API refuses writes with 503, ``code: read_only``, the operator's reason and
  ``Retry-After`` (``api.read_only``), before a body is read or anything is stored;
- a chat question is answered (search, cache and model all work) but neither the question
  nor the answer is added to the chat's history; the OpenAI-compatible endpoint, which
  stores no chat, is unchanged;
- workers finish the jobs they hold and take no new one: a job delivered meanwhile goes back
  to its queue, still ``queued``, and is looked at again after ``Retry-After`` seconds.
"""

from __future__ import annotations

import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, sessionmaker

from haven.db.engine import transaction
from haven.db.repositories import AuditLog
from haven.db.tables import PlatformFlag

log = structlog.get_logger("haven.read_only")

FLAG = "read_only"
REASON_MAX = 500

# Set for a request the API served while read-only mode was on, so the code it runs (the
# chat storing its history) can tell without reading the switch again.
request_read_only: ContextVar[bool] = ContextVar("haven_request_read_only", default=False)


@dataclass(frozen=True)
class ReadOnlyState:
    on: bool = False
    reason: str | None = None
    since: datetime | None = None
    # Who switched it: a user's name, or "cli".
    by: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "on": self.on,
            "reason": self.reason,
            "since": self.since.isoformat() if self.since else None,
            "by": self.by,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> ReadOnlyState:
        since = value.get("since")
        return cls(
            on=bool(value.get("on")),
            reason=value.get("reason"),
            since=datetime.fromisoformat(since) if since else None,
            by=value.get("by"),
        )


class FlagRepository:
    """The platform flags (platform-wide, no tenant)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, name: str) -> dict[str, Any] | None:
        row = self.session.execute(
            select(PlatformFlag.value).where(PlatformFlag.name == name)
        ).scalar_one_or_none()
        return dict(row) if row is not None else None

    def put(self, name: str, value: dict[str, Any]) -> None:
        stmt = pg_insert(PlatformFlag).values(name=name, value=value)
        self.session.execute(
            stmt.on_conflict_do_update(
                index_elements=[PlatformFlag.name],
                set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at},
            )
        )


def read(session: Session) -> ReadOnlyState:
    value = FlagRepository(session).get(FLAG)
    return ReadOnlyState.from_json(value) if value else ReadOnlyState()


def switch(
    session: Session, audit: AuditLog, *, on: bool, reason: str | None, by: str
) -> ReadOnlyState:
    """Turn read-only mode on or off, audited in the same transaction. Switching it on again
    keeps its start and updates the reason."""
    before = read(session)
    # The API refuses NUL in the reason; the CLI's argument is cleaned (JSONB cannot hold it).
    reason = (reason or "").replace("\x00", "").strip()[:REASON_MAX] or None
    if on:
        state = ReadOnlyState(
            on=True,
            reason=reason or "maintenance",
            since=before.since if before.on and before.since else datetime.now(UTC),
            by=by,
        )
    else:
        state = ReadOnlyState(on=False, reason=reason, since=None, by=by)
    FlagRepository(session).put(FLAG, state.to_json())
    audit.record(
        "platform.read_only.on" if on else "platform.read_only.off",
        target_type="platform",
        target_id=FLAG,
        tenant_id=audit.actor.tenant_id if audit.actor else None,
        reason=state.reason,
        was_on=before.on,
    )
    log.warning("platform.read_only", on=on, reason=state.reason, by=by)
    return state


class ReadOnlySwitch:
    """One process's view of the switch, read from PostgreSQL at most every ``ttl`` seconds.

    If PostgreSQL cannot be read, the last state read is kept (at start: off) and the failure
    logged: the switch must not flap because a replica lost its database for a moment."""

    def __init__(self, session_factory: sessionmaker[Session], ttl_seconds: float) -> None:
        self.session_factory = session_factory
        self.ttl = ttl_seconds
        self._state = ReadOnlyState()
        self._read_at: float | None = None
        self._lock = threading.Lock()

    @property
    def fresh(self) -> bool:
        return self._read_at is not None and time.monotonic() - self._read_at < self.ttl

    def cached(self) -> ReadOnlyState:
        """What was read last, without reading (for callers that must not block)."""
        return self._state

    def current(self) -> ReadOnlyState:
        """The switch, read again when what this process holds is older than ``ttl``
        (blocking: call it from a thread, not the event loop)."""
        if self.fresh:
            return self._state
        with self._lock:
            if self.fresh:
                return self._state
            try:
                with transaction(self.session_factory) as session:
                    self._state = read(session)
            except Exception as exc:  # keep the last known state; readiness reports the DB
                log.warning("read_only.unreadable", error=str(exc))
            self._read_at = time.monotonic()
            return self._state

    def forget(self) -> None:
        """Read again on the next call (after this process switched it)."""
        self._read_at = None
