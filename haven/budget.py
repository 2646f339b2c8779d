"""Token budgets that never overspend: tokens are reserved before an llm call and settled to
the call's real usage after it.

A tenant's budget is ``tenants.token_budget`` tokens per period (``HAVEN_BUDGET_PERIOD_SECONDS``,
one UTC day by default, periods aligned to the Unix epoch); ``None`` is unlimited (still
counted). The budget is per tenant only: users and API keys are held back by the rate limits
and stream caps (``haven.ratelimit``, ``haven.streams``), not by budgets of their own.

Each period has one row in ``token_budget_periods`` with ``used`` (settled tokens) and
``reserved`` (tokens held by calls in flight). ``reserve`` is one statement: it adds to
``reserved`` only ``WHERE budget - used - reserved >= tokens`` and inserts the reservation
from what that ``UPDATE ... RETURNING`` returned, so two callers can never both take the last
tokens (PostgreSQL re-checks the condition against the row a concurrent reserve just
committed). ``settle`` deletes the reservation and moves its tokens from ``reserved`` to
``used`` (never more than were reserved) in the same transaction that writes the usage
ledger row. A reservation carries a lease (``expires_at``) that its holder process renews
(``renew``, every few seconds, by ``BudgetKeeper`` or the API's background task); when the
holder dies the lease runs out and ``sweep`` releases the tokens. So at every moment
``used + reserved <= budget``, and what is recorded never exceeds the budget.

How a caller of llm uses it (the API for chats and OpenAI completions, workers for analyses
and reviews: whoever calls llm reserves, once per llm call)::

    budget = TokenBudget(session_factory, period_seconds=..., lease_seconds=...)  # per process
    keeper = BudgetKeeper(budget).start()     # a worker process: renews leases, sweeps

    try:
        held = budget.reserve(tenant_id, prompt_tokens + max_tokens, kind="analyze",
                              request_id=job_id)
    except BudgetExceeded as exc:             # a job: fail with reason "budget", keep what
        ...                                   # it produced, resume from there on retry
    try:
        result = <llm call with max_tokens=max_tokens>
    except BaseException:
        budget.release(held)                  # nothing was generated: nothing is charged
        raise
    budget.settle(held, prompt_tokens=result.prompt_tokens,
                  completion_tokens=result.completion_tokens, latency_ms=...)

``prompt_tokens`` should be the exact count of the rendered prompt (llm's ``/tokenize`` with
``messages`` returns it), so that what llm reports never exceeds the reservation; if it ever
does, only the reserved tokens are charged and ``budget.settle.over_reservation`` is logged.
A call interrupted part-way settles what was generated (prompt plus the answer tokens sent).
Cached answers never reserve: they cost nothing. Every function that takes a ``Session``
runs inside the caller's transaction; the others open their own.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from haven.db.engine import transaction
from haven.db.tables import UsageEntry
from haven.errors import LimitExceeded, NotFound

log = structlog.get_logger("haven.budget")

DAY_SECONDS = 24 * 3600


class BudgetExceeded(LimitExceeded):
    """The tenant's budget has not got the tokens this call would need; it resets at
    ``resets_at`` (``retry_after`` seconds from now)."""

    code = "budget.exceeded"

    def __init__(self, state: BudgetState, requested: int) -> None:
        retry_after = max(1.0, (state.resets_at - datetime.now(UTC)).total_seconds())
        super().__init__(
            f"the tenant's token budget of {state.limit} tokens for this period cannot hold"
            f" {requested} more tokens ({state.used} used, {state.reserved} held by answers in"
            f" progress); it resets at {state.resets_at.isoformat()}",
            retry_after=retry_after,
            code=self.code,
        )
        self.state = state
        self.requested = requested
        self.details = {
            "reason": "budget",
            "budget": state.limit,
            "used": state.used,
            "reserved": state.reserved,
            "requested": requested,
            "resets_at": state.resets_at.isoformat(),
            "retry_after": math.ceil(retry_after),
        }


@dataclass(frozen=True)
class BudgetState:
    tenant_id: uuid.UUID
    limit: int | None
    used: int
    reserved: int
    period_start: datetime
    resets_at: datetime

    @property
    def left(self) -> int | None:
        if self.limit is None:
            return None
        return max(0, self.limit - self.used - self.reserved)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant_id": str(self.tenant_id),
            "budget": self.limit,
            "used": self.used,
            "reserved": self.reserved,
            "left": self.left,
            "period_start": self.period_start.isoformat(),
            "resets_at": self.resets_at.isoformat(),
        }


@dataclass(frozen=True)
class Reservation:
    id: uuid.UUID
    tenant_id: uuid.UUID
    period_start: datetime
    tokens: int
    kind: str
    request_id: str | None = None


def period_bounds(now: datetime, period_seconds: int) -> tuple[datetime, datetime]:
    """The period holding ``now``: periods are aligned to the Unix epoch (a day starts at
    00:00 UTC)."""
    epoch = int(now.timestamp())
    start = epoch - epoch % period_seconds
    return (
        datetime.fromtimestamp(start, UTC),
        datetime.fromtimestamp(start + period_seconds, UTC),
    )


def default_holder() -> str:
    """This process, unique across restarts (a pid may be reused)."""
    return f"{socket.gethostname()[:120]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


_RESERVE = text(
    """
    WITH held AS (
        UPDATE token_budget_periods AS b
        SET reserved = b.reserved + :tokens
        FROM tenants AS t
        WHERE b.tenant_id = :tenant_id AND b.period_start = :period_start AND t.id = b.tenant_id
          AND (t.token_budget IS NULL OR t.token_budget - b.used - b.reserved >= :tokens)
        RETURNING b.tenant_id
    )
    INSERT INTO budget_reservations
        (id, tenant_id, period_start, tokens, holder, kind, request_id, expires_at)
    SELECT :id, tenant_id, :period_start, :tokens, :holder, :kind, :request_id,
           now() + make_interval(secs => :lease)
    FROM held
    RETURNING id
    """
)

_OPEN_PERIOD = text(
    """
    INSERT INTO token_budget_periods (tenant_id, period_start, used, reserved)
    SELECT id, :period_start, 0, 0 FROM tenants WHERE id = :tenant_id
    ON CONFLICT DO NOTHING
    """
)

_SETTLE = text(
    """
    WITH gone AS (
        DELETE FROM budget_reservations WHERE id = :id
        RETURNING tenant_id, period_start, tokens
    )
    UPDATE token_budget_periods AS b
    SET reserved = b.reserved - gone.tokens, used = b.used + LEAST(:tokens, gone.tokens)
    FROM gone
    WHERE b.tenant_id = gone.tenant_id AND b.period_start = gone.period_start
    RETURNING LEAST(:tokens, gone.tokens) AS charged, gone.tokens AS reserved
    """
)

# A reservation already swept (its holder stalled past the lease): charge what still fits.
_SETTLE_SWEPT = text(
    """
    WITH current AS (
        SELECT b.used, b.reserved, t.token_budget
        FROM token_budget_periods AS b JOIN tenants AS t ON t.id = b.tenant_id
        WHERE b.tenant_id = :tenant_id AND b.period_start = :period_start
        FOR UPDATE OF b
    ),
    amount AS (
        SELECT CASE WHEN token_budget IS NULL THEN :tokens
               ELSE LEAST(:tokens, GREATEST(token_budget - used - reserved, 0)) END AS charged
        FROM current
    )
    UPDATE token_budget_periods AS b SET used = b.used + amount.charged
    FROM amount
    WHERE b.tenant_id = :tenant_id AND b.period_start = :period_start
    RETURNING amount.charged
    """
)

_RELEASE = text(
    """
    WITH gone AS (
        DELETE FROM budget_reservations WHERE id = :id
        RETURNING tenant_id, period_start, tokens
    )
    UPDATE token_budget_periods AS b SET reserved = b.reserved - gone.tokens
    FROM gone
    WHERE b.tenant_id = gone.tenant_id AND b.period_start = gone.period_start
    """
)

# A reservation older than this is not renewed even by a live holder: a settle that was
# lost (its transaction failed, its task was cancelled) must not hold tokens for ever. No
# llm call runs this long (llm's own request limit is far shorter).
MAX_HOLD_SECONDS = 2 * 3600

_RENEW = text(
    """
    UPDATE budget_reservations SET expires_at = now() + make_interval(secs => :lease)
    WHERE holder = :holder AND created_at > now() - make_interval(secs => :max_hold)
    """
)

# One sweeper at a time (a transaction-scoped advisory lock): two sweeps updating several
# period rows in different orders could deadlock.
_SWEEP_LOCK = text("SELECT pg_try_advisory_xact_lock(:key)")
SWEEP_LOCK_KEY = 0x4A5E_B0D6

_SWEEP = text(
    """
    WITH gone AS (
        DELETE FROM budget_reservations WHERE expires_at < now()
        RETURNING tenant_id, period_start, tokens
    ),
    sums AS (
        SELECT tenant_id, period_start, sum(tokens) AS tokens, count(*) AS n
        FROM gone GROUP BY tenant_id, period_start
    )
    UPDATE token_budget_periods AS b SET reserved = b.reserved - sums.tokens
    FROM sums
    WHERE b.tenant_id = sums.tenant_id AND b.period_start = sums.period_start
    RETURNING sums.n
    """
)

_STATE = text(
    """
    SELECT t.token_budget, coalesce(b.used, 0), coalesce(b.reserved, 0)
    FROM tenants AS t
    LEFT JOIN token_budget_periods AS b
      ON b.tenant_id = t.id AND b.period_start = :period_start
    WHERE t.id = :tenant_id
    """
)


class TokenBudget:
    """Reservations of one process (its ``holder``). Thread-safe: it keeps no state but the
    holder name; every call is one short transaction."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        *,
        period_seconds: int = DAY_SECONDS,
        lease_seconds: float = 60.0,
        holder: str | None = None,
    ) -> None:
        if period_seconds < 1 or lease_seconds <= 0:
            raise ValueError("the period and the lease must be positive")
        self.factory = factory
        self.period_seconds = period_seconds
        self.lease_seconds = lease_seconds
        self.holder = holder or default_holder()

    def period(self, now: datetime | None = None) -> tuple[datetime, datetime]:
        return period_bounds(now or datetime.now(UTC), self.period_seconds)

    # -- reserve / settle / release ------------------------------------------------------

    def reserve(
        self,
        tenant_id: uuid.UUID,
        tokens: int,
        *,
        kind: str,
        request_id: str | None = None,
    ) -> Reservation:
        """Hold ``tokens`` of the tenant's budget; ``BudgetExceeded`` when they do not fit."""
        with transaction(self.factory) as session:
            return self.reserve_in(session, tenant_id, tokens, kind=kind, request_id=request_id)

    def reserve_in(
        self,
        session: Session,
        tenant_id: uuid.UUID,
        tokens: int,
        *,
        kind: str,
        request_id: str | None = None,
    ) -> Reservation:
        if tokens < 0:
            raise ValueError("a reservation holds zero or more tokens")
        start, _ = self.period()
        reservation = Reservation(uuid.uuid4(), tenant_id, start, tokens, kind, request_id)
        params = {
            "id": reservation.id,
            "tenant_id": tenant_id,
            "period_start": start,
            "tokens": tokens,
            "holder": self.holder,
            "kind": kind,
            "request_id": request_id,
            "lease": self.lease_seconds,
        }
        if session.execute(_RESERVE, params).first() is not None:
            return reservation
        # The period's first call (or an unknown tenant, or no room): open the period's row
        # and try once more; a concurrent opener makes ON CONFLICT skip, which is as good.
        session.execute(_OPEN_PERIOD, {"tenant_id": tenant_id, "period_start": start})
        if session.execute(_RESERVE, params).first() is not None:
            return reservation
        raise BudgetExceeded(self.state_in(session, tenant_id), tokens)

    def settle(
        self,
        reservation: Reservation,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        latency_ms: int | None = None,
        user_id: uuid.UUID | None = None,
        api_key_id: uuid.UUID | None = None,
        error: str | None = None,
        kind: str | None = None,
    ) -> int:
        """Charge the call's real usage and record it in the usage ledger; returns the
        tokens charged."""
        with transaction(self.factory) as session:
            return self.settle_in(
                session,
                reservation,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                latency_ms=latency_ms,
                user_id=user_id,
                api_key_id=api_key_id,
                error=error,
                kind=kind,
            )

    def settle_in(
        self,
        session: Session,
        reservation: Reservation,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        latency_ms: int | None = None,
        user_id: uuid.UUID | None = None,
        api_key_id: uuid.UUID | None = None,
        error: str | None = None,
        kind: str | None = None,
    ) -> int:
        used = max(0, prompt_tokens) + max(0, completion_tokens)
        row = session.execute(_SETTLE, {"id": reservation.id, "tokens": used}).first()
        if row is not None:
            charged = int(row[0])
        else:
            log.warning(
                "budget.settle.after_sweep",
                reservation_id=str(reservation.id),
                tenant_id=str(reservation.tenant_id),
            )
            swept = session.execute(
                _SETTLE_SWEPT,
                {
                    "tenant_id": reservation.tenant_id,
                    "period_start": reservation.period_start,
                    "tokens": used,
                },
            ).first()
            charged = int(swept[0]) if swept is not None else 0
        if used > charged:
            log.warning(
                "budget.settle.over_reservation",
                reservation_id=str(reservation.id),
                tenant_id=str(reservation.tenant_id),
                reserved=reservation.tokens,
                used=used,
                charged=charged,
            )
        session.add(
            UsageEntry(
                tenant_id=reservation.tenant_id,
                user_id=user_id,
                api_key_id=api_key_id,
                kind=kind or reservation.kind,
                prompt_tokens=max(0, prompt_tokens),
                completion_tokens=max(0, completion_tokens),
                latency_ms=latency_ms,
                request_id=reservation.request_id,
                error=error,
            )
        )
        session.flush()
        return charged

    def release(self, reservation: Reservation) -> None:
        """Give the tokens back: the call generated nothing."""
        with transaction(self.factory) as session:
            self.release_in(session, reservation)

    def release_in(self, session: Session, reservation: Reservation) -> None:
        session.execute(_RELEASE, {"id": reservation.id})

    # -- leases ---------------------------------------------------------------------------

    def renew(self) -> int:
        """Extend the lease of every reservation this process holds."""
        with transaction(self.factory) as session:
            result = session.execute(
                _RENEW,
                {"holder": self.holder, "lease": self.lease_seconds, "max_hold": MAX_HOLD_SECONDS},
            )
            return int(getattr(result, "rowcount", 0) or 0)

    def sweep(self) -> int:
        """Release the reservations whose lease ran out (their holder died); returns how
        many. Does nothing while another process sweeps."""
        with transaction(self.factory) as session:
            if not session.execute(_SWEEP_LOCK, {"key": SWEEP_LOCK_KEY}).scalar():
                return 0
            released = sum(int(row[0]) for row in session.execute(_SWEEP))
        if released:
            log.info("budget.sweep.released", reservations=released)
        return released

    def maintain(self) -> int:
        """One round of a keeper: renew this process's leases, then sweep dead ones."""
        self.renew()
        return self.sweep()

    # -- reading --------------------------------------------------------------------------

    def state(self, tenant_id: uuid.UUID) -> BudgetState:
        with transaction(self.factory) as session:
            return self.state_in(session, tenant_id)

    def state_in(self, session: Session, tenant_id: uuid.UUID) -> BudgetState:
        start, end = self.period()
        row = session.execute(_STATE, {"tenant_id": tenant_id, "period_start": start}).first()
        if row is None:
            raise NotFound("tenant", tenant_id)
        return BudgetState(tenant_id, row[0], int(row[1]), int(row[2]), start, end)


class BudgetKeeper:
    """A daemon thread that renews a process's leases and sweeps dead ones every third of
    the lease (for worker processes; the API runs the same round as a background task)."""

    def __init__(self, budget: TokenBudget, interval: float | None = None) -> None:
        self.budget = budget
        self.interval = interval or max(0.2, budget.lease_seconds / 3)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="budget-keeper", daemon=True)

    def start(self) -> BudgetKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.budget.maintain()
            except Exception as exc:  # the database is away: the next round tries again
                log.warning("budget.keeper.failed", error=str(exc))
