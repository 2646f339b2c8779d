"""Tenant administration (tenant admins) and tenants (platform admins)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status

from api.admin import service
from api.admin.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyRead,
    AuditRead,
    TenantCreate,
    TenantDeleted,
    TenantRead,
    TenantUpdate,
    UserCreate,
    UserRead,
    UserUpdate,
)
from api.deps import (
    PlatformAdminPrincipal,
    RequestIdDep,
    RuntimeDep,
    SessionDep,
    TenantAdminPrincipal,
)
from api.pagination import Page, pagination
from api.quotas import TenantLimits
from api.runtime import ApiRuntime
from api.usage import service as usage_service
from api.usage.schemas import BudgetRead, BudgetUpdate
from haven.auth.principal import Principal
from haven.db.engine import transaction
from haven.db.repositories import (
    ApiKeyRepository,
    AuditLog,
    AuditRepository,
    PlatformRepository,
    UserRepository,
)
from haven.errors import Forbidden, NotFound

# The audit action of each mutation, by endpoint name; a refusal is recorded as
# "<action>.refused".
ACTIONS = {
    "create_tenant": "tenant.create",
    "update_tenant": "tenant.update",
    "delete_tenant": "tenant.delete",
    "create_user": "user.create",
    "update_user": "user.update",
    "delete_user": "user.delete",
    "create_api_key": "api_key.create",
    "revoke_api_key": "api_key.revoke",
    "set_tenant_budget": "tenant.budget",
    "set_tenant_limits": "tenant.limits",
}
_TARGET_PARAMS = ("user_id", "key_id", "tenant_id")


def _record_refusal(
    runtime: ApiRuntime,
    actor: Principal,
    request_id: str | None,
    action: str,
    target_id: str | None,
    refused: Forbidden | NotFound,
) -> None:
    # Its own transaction: the request's rolls back with the refusal.
    with transaction(runtime.session_factory) as session:
        AuditLog(session, actor, request_id).record(
            f"{action}.refused",
            target_type=action.split(".")[0],
            target_id=target_id,
            tenant_id=actor.tenant_id,
            code=refused.code,
            reason=refused.message,
        )


async def audit_refusals(request: Request, runtime: RuntimeDep) -> AsyncIterator[None]:
    """Every refused admin mutation (a role too low, a target above the caller's role or in
    another tenant) is audited, whichever check refused it."""
    try:
        yield
    except (Forbidden, NotFound) as refused:
        route = request.scope.get("route")
        action = ACTIONS.get(getattr(route, "name", ""))
        actor: Principal | None = getattr(request.state, "principal", None)
        if action is not None and actor is not None:
            target = next(
                (request.path_params[p] for p in _TARGET_PARAMS if p in request.path_params), None
            )
            await runtime.in_auth_thread(
                _record_refusal,
                runtime,
                actor,
                getattr(request.state, "request_id", None),
                action,
                target,
                refused,
            )
        raise


router = APIRouter(prefix="/api/v1/admin", tags=["admin"], dependencies=[Depends(audit_refusals)])

AdminPage = Annotated[Page, pagination(default_limit=100, max_limit=500)]


@router.post("/tenants", response_model=TenantRead, status_code=status.HTTP_201_CREATED)
def create_tenant(
    body: TenantCreate, session: SessionDep, actor: PlatformAdminPrincipal, rid: RequestIdDep
) -> TenantRead:
    tenant = service.create_tenant(session, actor, AuditLog(session, actor, rid), body)
    return TenantRead.model_validate(tenant)


@router.patch("/tenants/{tenant_id}", response_model=TenantRead)
def update_tenant(
    tenant_id: uuid.UUID,
    body: TenantUpdate,
    session: SessionDep,
    runtime: RuntimeDep,
    actor: PlatformAdminPrincipal,
    rid: RequestIdDep,
) -> TenantRead:
    tenant = service.update_tenant(
        session, actor, AuditLog(session, actor, rid), runtime.auth, tenant_id, body
    )
    return TenantRead.model_validate(tenant)


@router.delete("/tenants/{tenant_id}", response_model=TenantDeleted)
async def delete_tenant(
    tenant_id: uuid.UUID, runtime: RuntimeDep, actor: PlatformAdminPrincipal, rid: RequestIdDep
) -> TenantDeleted:
    """Delete a tenant with everything it holds: rows, objects, vectors, cached answers."""
    return await runtime.in_db_thread(service.delete_tenant, runtime, actor, rid, tenant_id)


@router.get("/tenants", response_model=list[TenantRead])
def list_tenants(session: SessionDep, _: PlatformAdminPrincipal) -> list[TenantRead]:
    return [TenantRead.model_validate(t) for t in PlatformRepository(session).tenants()]


@router.get("/users", response_model=list[UserRead])
def list_users(session: SessionDep, actor: TenantAdminPrincipal, page: AdminPage) -> list[UserRead]:
    users = UserRepository(session, actor).list(offset=page.offset, limit=page.limit)
    return [UserRead.model_validate(u) for u in users]


@router.post("/users", response_model=UserRead, status_code=status.HTTP_201_CREATED)
def create_user(
    body: UserCreate, session: SessionDep, actor: TenantAdminPrincipal, rid: RequestIdDep
) -> UserRead:
    user = service.create_user(session, actor, AuditLog(session, actor, rid), body)
    return UserRead.model_validate(user)


@router.get("/users/{user_id}", response_model=UserRead)
def get_user(user_id: uuid.UUID, session: SessionDep, actor: TenantAdminPrincipal) -> UserRead:
    return UserRead.model_validate(UserRepository(session, actor).require(user_id))


@router.patch("/users/{user_id}", response_model=UserRead)
def update_user(
    user_id: uuid.UUID,
    body: UserUpdate,
    session: SessionDep,
    runtime: RuntimeDep,
    actor: TenantAdminPrincipal,
    rid: RequestIdDep,
) -> UserRead:
    audit = AuditLog(session, actor, rid)
    user = service.update_user(session, actor, audit, runtime.auth, user_id, body)
    return UserRead.model_validate(user)


@router.delete("/users/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_user(
    user_id: uuid.UUID,
    session: SessionDep,
    runtime: RuntimeDep,
    actor: TenantAdminPrincipal,
    rid: RequestIdDep,
) -> Response:
    service.delete_user(session, actor, AuditLog(session, actor, rid), runtime.auth, user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/api-keys", response_model=list[ApiKeyRead])
def list_api_keys(
    session: SessionDep, actor: TenantAdminPrincipal, page: AdminPage
) -> list[ApiKeyRead]:
    keys = ApiKeyRepository(session, actor).list(offset=page.offset, limit=page.limit)
    return [ApiKeyRead.model_validate(k) for k in keys]


@router.post("/api-keys", response_model=ApiKeyCreated, status_code=status.HTTP_201_CREATED)
def create_api_key(
    body: ApiKeyCreate, session: SessionDep, actor: TenantAdminPrincipal, rid: RequestIdDep
) -> ApiKeyCreated:
    return service.create_api_key(session, actor, AuditLog(session, actor, rid), body)


@router.delete("/api-keys/{key_id}", response_model=ApiKeyRead)
def revoke_api_key(
    key_id: uuid.UUID,
    session: SessionDep,
    runtime: RuntimeDep,
    actor: TenantAdminPrincipal,
    rid: RequestIdDep,
) -> ApiKeyRead:
    audit = AuditLog(session, actor, rid)
    key = service.revoke_api_key(session, actor, audit, runtime.auth, key_id)
    return ApiKeyRead.model_validate(key)


@router.get("/audit", response_model=list[AuditRead])
def list_audit(
    session: SessionDep, actor: TenantAdminPrincipal, page: AdminPage
) -> list[AuditRead]:
    entries = AuditRepository(session, actor).list(offset=page.offset, limit=page.limit)
    return [AuditRead.model_validate(e) for e in entries]


# -- token budgets and limits (api.usage.service) ------------------------------------------


@router.get("/tenants/{tenant_id}/budget", response_model=BudgetRead)
def get_tenant_budget(
    tenant_id: uuid.UUID, session: SessionDep, runtime: RuntimeDep, _: PlatformAdminPrincipal
) -> BudgetRead:
    return usage_service.budget_read(runtime.quotas.budget.state_in(session, tenant_id))


@router.put("/tenants/{tenant_id}/budget", response_model=BudgetRead)
def set_tenant_budget(
    tenant_id: uuid.UUID,
    body: BudgetUpdate,
    session: SessionDep,
    runtime: RuntimeDep,
    actor: PlatformAdminPrincipal,
    rid: RequestIdDep,
) -> BudgetRead:
    """Set the tenant's tokens per period (null: unlimited); applies to the next
    reservation, answers in progress keep theirs."""
    audit = AuditLog(session, actor, rid)
    return usage_service.set_budget(
        session, runtime.quotas.budget, audit, tenant_id, body.token_budget
    )


@router.get("/tenants/{tenant_id}/limits", response_model=TenantLimits)
def get_tenant_limits(
    tenant_id: uuid.UUID, session: SessionDep, _: PlatformAdminPrincipal
) -> TenantLimits:
    return usage_service.read_limits(session, tenant_id)


@router.put("/tenants/{tenant_id}/limits", response_model=TenantLimits)
def set_tenant_limits(
    tenant_id: uuid.UUID,
    body: TenantLimits,
    session: SessionDep,
    runtime: RuntimeDep,
    actor: PlatformAdminPrincipal,
    rid: RequestIdDep,
) -> TenantLimits:
    """The tenant's rate limits and stream caps; a field left out takes the platform
    default. Other API processes apply them within HAVEN_TENANT_LIMITS_TTL_SECONDS."""
    limits = usage_service.set_limits(session, AuditLog(session, actor, rid), tenant_id, body)
    runtime.quotas.forget_limits(tenant_id)
    return limits
