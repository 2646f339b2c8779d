"""Administration of tenants, users and API keys. Every change writes an audit row in the
same transaction, so an action and its record commit or fail together."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from fastapi import HTTPException, status
from sqlalchemy.orm import Session

from api.admin.schemas import (
    TENANT_ROLES,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyRead,
    TenantCreate,
    UserCreate,
    UserUpdate,
)
from haven.auth import api_keys
from haven.auth.passwords import hash_password
from haven.auth.principal import Principal
from haven.db.repositories import ApiKeyRepository, AuditLog, PlatformRepository, UserRepository
from haven.db.tables import ApiKey, Role, Tenant, User


def _check_grantable(actor: Principal, role: Role) -> None:
    if role not in TENANT_ROLES and not actor.is_platform_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"only a platform admin can grant {role}")
    if not actor.has_role(role):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"you cannot grant {role}")


def create_tenant(session: Session, audit: AuditLog, body: TenantCreate) -> Tenant:
    platform = PlatformRepository(session)
    if platform.tenant_by_slug(body.slug) is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"tenant {body.slug!r} already exists")
    if (body.admin_username is None) != (body.admin_password is None):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "admin_username and admin_password go together",
        )
    tenant = platform.add_tenant(
        Tenant(slug=body.slug, name=body.name, token_budget=body.token_budget)
    )
    audit.record(
        "tenant.create",
        target_type="tenant",
        target_id=tenant.id,
        tenant_id=tenant.id,
        slug=tenant.slug,
    )
    if body.admin_username and body.admin_password:
        if platform.username_taken(body.admin_username):
            raise HTTPException(
                status.HTTP_409_CONFLICT, f"username {body.admin_username!r} is taken"
            )
        admin = User(
            tenant_id=tenant.id,
            username=body.admin_username,
            password_hash=hash_password(body.admin_password),
            role=Role.TENANT_ADMIN,
        )
        session.add(admin)
        session.flush()
        audit.record(
            "user.create",
            target_type="user",
            target_id=admin.id,
            tenant_id=tenant.id,
            username=admin.username,
            role=admin.role.value,
        )
    return tenant


def create_user(session: Session, actor: Principal, audit: AuditLog, body: UserCreate) -> User:
    _check_grantable(actor, body.role)
    if PlatformRepository(session).username_taken(body.username):
        raise HTTPException(status.HTTP_409_CONFLICT, f"username {body.username!r} is taken")
    user = UserRepository(session, actor).add(
        User(
            username=body.username,
            password_hash=hash_password(body.password),
            role=body.role,
        )
    )
    audit.record(
        "user.create",
        target_type="user",
        target_id=user.id,
        tenant_id=actor.tenant_id,
        username=user.username,
        role=user.role.value,
    )
    return user


def update_user(
    session: Session, actor: Principal, audit: AuditLog, user_id: uuid.UUID, body: UserUpdate
) -> User:
    user = UserRepository(session, actor).require(user_id)
    changes: dict[str, object] = {}
    if body.role is not None and body.role != user.role:
        _check_grantable(actor, body.role)
        _check_grantable(actor, user.role)
        changes["role"] = {"from": user.role.value, "to": body.role.value}
        user.role = body.role
    if body.is_active is not None and body.is_active != user.is_active:
        if user.id == actor.subject_id and not body.is_active:
            raise HTTPException(status.HTTP_409_CONFLICT, "you cannot disable your own account")
        changes["is_active"] = body.is_active
        user.is_active = body.is_active
    if body.password is not None:
        user.password_hash = hash_password(body.password)
        changes["password"] = "changed"  # noqa: S105 - a note, not a secret
    session.flush()
    if changes:
        audit.record(
            "user.update",
            target_type="user",
            target_id=user.id,
            tenant_id=actor.tenant_id,
            username=user.username,
            changes=changes,
        )
    return user


def delete_user(session: Session, actor: Principal, audit: AuditLog, user_id: uuid.UUID) -> None:
    users = UserRepository(session, actor)
    user = users.require(user_id)
    if user.id == actor.subject_id:
        raise HTTPException(status.HTTP_409_CONFLICT, "you cannot delete your own account")
    _check_grantable(actor, user.role)
    users.delete(user)
    audit.record(
        "user.delete",
        target_type="user",
        target_id=user_id,
        tenant_id=actor.tenant_id,
        username=user.username,
    )


def create_api_key(
    session: Session, actor: Principal, audit: AuditLog, body: ApiKeyCreate
) -> ApiKeyCreated:
    if body.role not in TENANT_ROLES:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "API keys carry tenant roles only")
    _check_grantable(actor, body.role)
    if body.expires_at is not None and body.expires_at <= datetime.now(UTC):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "expires_at is in the past")
    new = api_keys.generate_api_key()
    key = ApiKeyRepository(session, actor).add(
        ApiKey(
            name=body.name,
            prefix=new.prefix,
            key_hash=new.key_hash,
            role=body.role,
            created_by=actor.subject_id if actor.kind == "user" else None,
            expires_at=body.expires_at,
        )
    )
    audit.record(
        "api_key.create",
        target_type="api_key",
        target_id=key.id,
        tenant_id=actor.tenant_id,
        name=key.name,
        role=key.role.value,
    )
    return ApiKeyCreated(**ApiKeyRead.model_validate(key).model_dump(), api_key=new.plaintext)


def revoke_api_key(
    session: Session, actor: Principal, audit: AuditLog, key_id: uuid.UUID
) -> ApiKey:
    key = ApiKeyRepository(session, actor).require(key_id)
    if key.revoked_at is None:
        key.revoked_at = datetime.now(UTC)
        session.flush()
        audit.record(
            "api_key.revoke",
            target_type="api_key",
            target_id=key.id,
            tenant_id=actor.tenant_id,
            name=key.name,
        )
    return key
