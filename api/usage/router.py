"""Usage analytics and the token budget, for tenant admins (their tenant) and platform admins
(any tenant, or all)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Query

from api.deps import RuntimeDep, SessionDep, TenantAdminPrincipal
from api.usage import service
from api.usage.schemas import BudgetRead, Period, UsageRead

router = APIRouter(prefix="/api/v1", tags=["usage"])


@router.get("/usage", response_model=UsageRead)
def read_usage(
    session: SessionDep,
    runtime: RuntimeDep,
    actor: TenantAdminPrincipal,
    period: Period = "24h",
    tenant_id: uuid.UUID | None = Query(
        default=None, description="platform admins: one tenant (every tenant when left out)"
    ),
) -> UsageRead:
    """Requests, tokens, cached answers, active users, latency and errors over the last
    hour, day or week, in buckets for charts (5 min, 1 h, 6 h), with a breakdown per user
    and API key and, for one tenant, its budget."""
    scope = service.scope_tenant(actor, tenant_id)
    return service.usage(session, runtime.quotas.budget, scope, period)


@router.get("/budget", response_model=BudgetRead)
def read_budget(
    session: SessionDep,
    runtime: RuntimeDep,
    actor: TenantAdminPrincipal,
    tenant_id: uuid.UUID | None = Query(default=None, description="platform admins: a tenant"),
) -> BudgetRead:
    """The tenant's token budget in the current period: used, held by answers in progress,
    left, and when it resets."""
    scope = service.scope_tenant(actor, tenant_id) or actor.tenant_id
    return service.budget_read(runtime.quotas.budget.state_in(session, scope))
