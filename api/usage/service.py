"""Usage analytics from the usage ledger, and the budget and limits admins set.

One ledger row is one answer: asked of llm (with its tokens, latency and, once started, the
error that ended it) or served from the cache (kind ``*.cached``, no tokens). The figures of a
window are read with the ``(tenant_id, created_at)`` index for one tenant and the
``(created_at)`` index for the platform.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from api.quotas import TenantLimits
from api.usage.schemas import (
    BudgetRead,
    CallerUsage,
    Latency,
    Period,
    UsageBucket,
    UsageFigures,
    UsageRead,
)
from haven.auth.principal import Principal
from haven.budget import BudgetState, TokenBudget
from haven.db.repositories import AuditLog, PlatformRepository
from haven.db.tables import Tenant
from haven.errors import NotFound

# The window of each period and the width of its chart buckets.
WINDOWS: dict[str, tuple[timedelta, timedelta]] = {
    "1h": (timedelta(hours=1), timedelta(minutes=5)),
    "24h": (timedelta(hours=24), timedelta(hours=1)),
    "7d": (timedelta(days=7), timedelta(hours=6)),
}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_FIGURES = """
    count(*) AS requests,
    coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
    coalesce(sum(completion_tokens), 0) AS completion_tokens,
    count(*) FILTER (WHERE kind LIKE '%.cached') AS cached_answers,
    count(DISTINCT user_id) AS active_users,
    count(DISTINCT api_key_id) AS active_api_keys,
    count(*) FILTER (WHERE error IS NOT NULL AND error <> 'interrupted') AS errors,
    count(*) FILTER (WHERE error = 'interrupted') AS interrupted,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50,
    percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95
"""
_SCOPE = (
    "created_at >= :since AND created_at <= :until"
    " AND (CAST(:tenant_id AS uuid) IS NULL OR tenant_id = :tenant_id)"
)
# Built from the constant fragments above only; every value is a bound parameter.
_TOTALS = text(f"SELECT {_FIGURES} FROM usage_ledger WHERE {_SCOPE}")  # noqa: S608
_BUCKETS = text(
    "SELECT date_bin(:bucket, created_at, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS start,"  # noqa: S608
    f" {_FIGURES} FROM usage_ledger WHERE {_SCOPE} GROUP BY 1 ORDER BY 1"
)
_CALLERS = text(
    f"""
    SELECT l.user_id, u.username, l.api_key_id, k.name AS api_key_name,
           count(*) AS requests,
           coalesce(sum(l.prompt_tokens), 0) AS prompt_tokens,
           coalesce(sum(l.completion_tokens), 0) AS completion_tokens,
           count(*) FILTER (WHERE l.kind LIKE '%.cached') AS cached_answers,
           count(*) FILTER (WHERE l.error IS NOT NULL AND l.error <> 'interrupted') AS errors
    FROM (SELECT * FROM usage_ledger WHERE {_SCOPE}) AS l
    LEFT JOIN users AS u ON u.id = l.user_id
    LEFT JOIN api_keys AS k ON k.id = l.api_key_id
    GROUP BY l.user_id, u.username, l.api_key_id, k.name
    ORDER BY coalesce(sum(l.prompt_tokens + l.completion_tokens), 0) DESC, count(*) DESC
    """  # noqa: S608
)


def _figures(row: Any) -> dict[str, Any]:
    return {
        "requests": int(row.requests),
        "prompt_tokens": int(row.prompt_tokens),
        "completion_tokens": int(row.completion_tokens),
        "cached_answers": int(row.cached_answers),
        "active_users": int(row.active_users),
        "active_api_keys": int(row.active_api_keys),
        "errors": int(row.errors),
        "interrupted": int(row.interrupted),
        "latency": Latency(
            p50_ms=None if row.p50 is None else round(float(row.p50), 1),
            p95_ms=None if row.p95 is None else round(float(row.p95), 1),
        ),
    }


def budget_read(state: BudgetState) -> BudgetRead:
    return BudgetRead(
        tenant_id=state.tenant_id,
        budget=state.limit,
        used=state.used,
        reserved=state.reserved,
        left=state.left,
        period_start=state.period_start,
        resets_at=state.resets_at,
    )


def scope_tenant(actor: Principal, tenant_id: uuid.UUID | None) -> uuid.UUID | None:
    """The tenant a caller may read: a tenant admin only their own (another's id is not
    found), a platform admin any, or all (None)."""
    if actor.is_platform_admin:
        return tenant_id
    if tenant_id is not None and tenant_id != actor.tenant_id:
        raise NotFound("tenant", tenant_id)
    return actor.tenant_id


def usage(
    session: Session,
    budget: TokenBudget,
    tenant_id: uuid.UUID | None,
    period: Period,
    now: datetime | None = None,
) -> UsageRead:
    until = now or datetime.now(UTC)
    window, bucket = WINDOWS[period]
    since = until - window
    if tenant_id is not None and session.get(Tenant, tenant_id) is None:
        raise NotFound("tenant", tenant_id)
    params = {"since": since, "until": until, "tenant_id": tenant_id, "bucket": bucket}
    totals = session.execute(_TOTALS, params).one()
    rows = session.execute(_BUCKETS, params).all()
    found = {row.start: row for row in rows}
    step = int(bucket.total_seconds())
    first = EPOCH + timedelta(seconds=(int((since - EPOCH).total_seconds()) // step) * step)
    buckets: list[UsageBucket] = []
    start = first
    while start <= until:
        row = found.get(start)
        if row is not None:
            buckets.append(UsageBucket(start=start, **_figures(row)))
        else:
            buckets.append(
                UsageBucket(
                    start=start,
                    requests=0,
                    prompt_tokens=0,
                    completion_tokens=0,
                    cached_answers=0,
                    active_users=0,
                    active_api_keys=0,
                    errors=0,
                    interrupted=0,
                    latency=Latency(p50_ms=None, p95_ms=None),
                )
            )
        start += bucket
    callers = session.execute(_CALLERS, params).all()
    return UsageRead(
        period=period,
        tenant_id=tenant_id,
        since=since,
        until=until,
        bucket_seconds=step,
        totals=UsageFigures(**_figures(totals)),
        buckets=buckets,
        users=[
            CallerUsage(
                user_id=c.user_id,
                username=c.username,
                api_key_id=c.api_key_id,
                api_key_name=c.api_key_name,
                requests=int(c.requests),
                prompt_tokens=int(c.prompt_tokens),
                completion_tokens=int(c.completion_tokens),
                cached_answers=int(c.cached_answers),
                errors=int(c.errors),
            )
            for c in callers
        ],
        budget=budget_read(budget.state_in(session, tenant_id)) if tenant_id else None,
    )


def _tenant(session: Session, tenant_id: uuid.UUID) -> Tenant:
    tenant = PlatformRepository(session).tenant(tenant_id)
    if tenant is None:
        raise NotFound("tenant", tenant_id)
    return tenant


def set_budget(
    session: Session,
    budget: TokenBudget,
    audit: AuditLog,
    tenant_id: uuid.UUID,
    token_budget: int | None,
) -> BudgetRead:
    tenant = _tenant(session, tenant_id)
    before = tenant.token_budget
    tenant.token_budget = token_budget
    session.flush()
    audit.record(
        "tenant.budget",
        target_type="tenant",
        target_id=tenant.id,
        tenant_id=tenant.id,
        token_budget={"from": before, "to": token_budget},
    )
    return budget_read(budget.state_in(session, tenant_id))


def read_limits(session: Session, tenant_id: uuid.UUID) -> TenantLimits:
    return TenantLimits.model_validate(_tenant(session, tenant_id).limits or {})


def set_limits(
    session: Session, audit: AuditLog, tenant_id: uuid.UUID, limits: TenantLimits
) -> TenantLimits:
    tenant = _tenant(session, tenant_id)
    before = tenant.limits or {}
    tenant.limits = limits.model_dump(exclude_none=True)
    session.flush()
    audit.record(
        "tenant.limits",
        target_type="tenant",
        target_id=tenant.id,
        tenant_id=tenant.id,
        limits={"from": before, "to": tenant.limits},
    )
    return limits
