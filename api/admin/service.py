"""Administration of tenants, users and API keys. Every change writes an audit row in the
same transaction, so an action and its record commit or fail together; every change goes
through the one role check (``haven.auth.policy.authorize``); every change that affects what
a caller may do is published to the callers' current state (``haven.auth.state``) when it
commits, so the very next request of that caller sees it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import structlog
from sqlalchemy.orm import Session

from api.admin.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyRead,
    TenantCreate,
    TenantDeleted,
    TenantUpdate,
    UserCreate,
    UserUpdate,
)
from api.runtime import ApiRuntime
from haven import answer_cache, storage
from haven.auth import accounts, api_keys
from haven.auth.passwords import hash_password
from haven.auth.policy import Action, Target, authorize
from haven.auth.principal import Principal
from haven.auth.state import AuthStates, CallerState
from haven.db.engine import transaction
from haven.db.repositories import ApiKeyRepository, AuditLog, PlatformRepository, UserRepository
from haven.db.tables import ApiKey, Role, Tenant, User
from haven.errors import Conflict, Invalid, NotFound, Unavailable

log = structlog.get_logger("haven.admin")


def create_tenant(
    session: Session, actor: Principal, audit: AuditLog, body: TenantCreate
) -> Tenant:
    if (body.admin_username is None) != (body.admin_password is None):
        raise Invalid("admin_username and admin_password go together")
    tenant = accounts.create_tenant(
        session, audit, slug=body.slug, name=body.name, token_budget=body.token_budget
    )
    if body.admin_username and body.admin_password:
        accounts.create_user(
            session,
            audit,
            tenant_id=tenant.id,
            username=body.admin_username,
            password=body.admin_password,
            role=Role.TENANT_ADMIN,
            actor=actor,
        )
    return tenant


def update_tenant(
    session: Session,
    actor: Principal,
    audit: AuditLog,
    auth: AuthStates,
    tenant_id: uuid.UUID,
    body: TenantUpdate,
) -> Tenant:
    platform = PlatformRepository(session)
    tenant = platform.tenant(tenant_id)
    if tenant is None:
        raise NotFound("tenant", tenant_id)
    changes: dict[str, object] = {}
    if body.name is not None and body.name != tenant.name:
        changes["name"] = {"from": tenant.name, "to": body.name}
        tenant.name = body.name
    if "token_budget" in body.model_fields_set and body.token_budget != tenant.token_budget:
        changes["token_budget"] = {"from": tenant.token_budget, "to": body.token_budget}
        tenant.token_budget = body.token_budget
    if body.is_active is not None and body.is_active != tenant.is_active:
        if tenant.id == actor.tenant_id and not body.is_active:
            raise Conflict("you cannot disable your own tenant", code="tenant.own")
        changes["is_active"] = body.is_active
        platform.set_tenant_active(tenant, body.is_active)
        auth.publish_after_commit(session, tenants={tenant.id: body.is_active})
    session.flush()
    if changes:
        audit.record(
            "tenant.update",
            target_type="tenant",
            target_id=tenant.id,
            tenant_id=tenant.id,
            slug=tenant.slug,
            changes=changes,
        )
    return tenant


def delete_tenant(
    runtime: ApiRuntime, actor: Principal, request_id: str | None, tenant_id: uuid.UUID
) -> TenantDeleted:
    """Disable the tenant (every request of its users and keys is refused from here on), purge
    its vectors, objects and cached answers, then delete its rows; audited with the counts.

    The stores outside PostgreSQL are purged first and the rows last, so a purge that fails
    half-way leaves a disabled tenant whose deletion can simply be asked again, never rows
    gone with their data left behind."""
    with transaction(runtime.session_factory) as session:
        platform = PlatformRepository(session)
        tenant = platform.tenant(tenant_id)
        if tenant is None:
            raise NotFound("tenant", tenant_id)
        if tenant.id == actor.tenant_id:
            raise Conflict("you cannot delete your own tenant", code="tenant.own")
        slug = tenant.slug
        platform.set_tenant_active(tenant, False)
        runtime.auth.publish_after_commit(session, tenants={tenant_id: False})
    try:
        vectors = runtime.index.delete_tenant(tenant_id)
        objects = storage.delete_prefix(runtime.s3, runtime.settings.s3_bucket, tenant_id)
        cached = answer_cache.forget_tenant(runtime.redis, tenant_id)
    except Exception as exc:
        log.exception("admin.tenant.purge_failed", tenant=str(tenant_id))
        raise Unavailable(
            "purging the tenant's data failed; it stays disabled: ask again to finish",
            code="tenant.purge_failed",
            retry_after=5,
        ) from exc
    with transaction(runtime.session_factory) as session:
        platform = PlatformRepository(session)
        rows = platform.tenant_row_counts(tenant_id)
        platform.delete_tenant(tenant_id)
        AuditLog(session, actor, request_id).record(
            "tenant.delete",
            target_type="tenant",
            target_id=tenant_id,
            tenant_id=None,  # the tenant is gone; the audit row stays
            slug=slug,
            rows=rows,
            objects=objects,
            vectors=vectors,
            cache_entries=cached,
        )
        runtime.auth.publish_after_commit(session, tenants={tenant_id: False})
    log.info("admin.tenant.deleted", tenant=str(tenant_id), objects=objects, vectors=vectors)
    return TenantDeleted(
        id=tenant_id,
        slug=slug,
        rows=rows,
        objects=objects,
        vectors=vectors,
        cache_entries=cached,
    )


def create_user(session: Session, actor: Principal, audit: AuditLog, body: UserCreate) -> User:
    return accounts.create_user(
        session,
        audit,
        tenant_id=actor.tenant_id,
        username=body.username,
        password=body.password,
        role=body.role,
        actor=actor,
    )


def _target(user: User) -> Target:
    return Target(tenant_id=user.tenant_id, role=user.role, subject_id=user.id)


def update_user(
    session: Session,
    actor: Principal,
    audit: AuditLog,
    auth: AuthStates,
    user_id: uuid.UUID,
    body: UserUpdate,
) -> User:
    user = UserRepository(session, actor).require(user_id)
    target = _target(user)
    authorize(actor, Action.UPDATE_USER, target)
    changes: dict[str, object] = {}
    if body.role is not None and body.role != user.role:
        authorize(actor, Action.UPDATE_USER, target, grants=body.role)
        if user.id == actor.subject_id:
            raise Conflict("you cannot change your own role", code="user.own_role")
        changes["role"] = {"from": user.role.value, "to": body.role.value}
        user.role = body.role
    if body.is_active is not None and body.is_active != user.is_active:
        authorize(actor, Action.DISABLE_USER, target)
        if user.id == actor.subject_id and not body.is_active:
            raise Conflict("you cannot disable your own account", code="user.own_account")
        changes["is_active"] = body.is_active
        user.is_active = body.is_active
    if body.password is not None:
        authorize(actor, Action.SET_PASSWORD, target)
        user.password_hash = hash_password(body.password)
        changes["password"] = "changed"  # noqa: S105 - a note, not a secret
    if changes:
        # A new role, a disable or a new password ends the user's sessions.
        user.token_version += 1
        session.flush()
        auth.publish_after_commit(session, subjects={("user", user.id): CallerState.of_user(user)})
        audit.record(
            "user.update",
            target_type="user",
            target_id=user.id,
            tenant_id=actor.tenant_id,
            username=user.username,
            changes=changes,
        )
    return user


def delete_user(
    session: Session, actor: Principal, audit: AuditLog, auth: AuthStates, user_id: uuid.UUID
) -> None:
    """The user's chats (private to them) are deleted with them."""
    users = UserRepository(session, actor)
    user = users.require(user_id)
    if user.id == actor.subject_id:
        raise Conflict("you cannot delete your own account", code="user.own_account")
    authorize(actor, Action.DELETE_USER, _target(user))
    users.delete(user)
    auth.publish_after_commit(session, subjects={("user", user_id): CallerState(active=False)})
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
    authorize(actor, Action.CREATE_API_KEY, grants=body.role)
    if body.expires_at is not None and body.expires_at <= datetime.now(UTC):
        raise Invalid("expires_at is in the past", code="api_key.expired")
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
    session: Session, actor: Principal, audit: AuditLog, auth: AuthStates, key_id: uuid.UUID
) -> ApiKey:
    key = ApiKeyRepository(session, actor).require(key_id)
    authorize(
        actor,
        Action.REVOKE_API_KEY,
        Target(tenant_id=key.tenant_id, role=key.role, subject_id=key.id, kind="api_key"),
    )
    if key.revoked_at is None:
        key.revoked_at = datetime.now(UTC)
        session.flush()
        # Tokens exchanged from the key are refused from the next request on.
        auth.publish_after_commit(
            session, subjects={("api_key", key.id): CallerState(active=False)}
        )
        audit.record(
            "api_key.revoke",
            target_type="api_key",
            target_id=key.id,
            tenant_id=actor.tenant_id,
            name=key.name,
        )
    return key
