"""Tenant administration (tenant admins) and tenants (platform admins)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Response, status

from api.admin import service
from api.admin.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyRead,
    AuditRead,
    TenantCreate,
    TenantRead,
    UserCreate,
    UserRead,
    UserUpdate,
)
from api.deps import PlatformAdminPrincipal, RequestIdDep, SessionDep, TenantAdminPrincipal
from api.pagination import Page, pagination
from haven.db.repositories import (
    ApiKeyRepository,
    AuditLog,
    AuditRepository,
    PlatformRepository,
    UserRepository,
)

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])

AdminPage = Annotated[Page, pagination(default_limit=100, max_limit=500)]


@router.post("/tenants", response_model=TenantRead, status_code=status.HTTP_201_CREATED)
def create_tenant(
    body: TenantCreate, session: SessionDep, actor: PlatformAdminPrincipal, rid: RequestIdDep
) -> TenantRead:
    tenant = service.create_tenant(session, AuditLog(session, actor, rid), body)
    return TenantRead.model_validate(tenant)


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
    actor: TenantAdminPrincipal,
    rid: RequestIdDep,
) -> UserRead:
    user = service.update_user(session, actor, AuditLog(session, actor, rid), user_id, body)
    return UserRead.model_validate(user)


@router.delete("/users/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_user(
    user_id: uuid.UUID, session: SessionDep, actor: TenantAdminPrincipal, rid: RequestIdDep
) -> Response:
    service.delete_user(session, actor, AuditLog(session, actor, rid), user_id)
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
    key_id: uuid.UUID, session: SessionDep, actor: TenantAdminPrincipal, rid: RequestIdDep
) -> ApiKeyRead:
    key = service.revoke_api_key(session, actor, AuditLog(session, actor, rid), key_id)
    return ApiKeyRead.model_validate(key)


@router.get("/audit", response_model=list[AuditRead])
def list_audit(
    session: SessionDep, actor: TenantAdminPrincipal, page: AdminPage
) -> list[AuditRead]:
    entries = AuditRepository(session, actor).list(offset=page.offset, limit=page.limit)
    return [AuditRead.model_validate(e) for e in entries]
