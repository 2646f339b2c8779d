"""Creating tenants and users, each with its audit row in the same transaction: the one place
the admin API, the ``haven admin`` commands and the local launcher's first start do it.

``actor`` is the authenticated caller, checked against the role hierarchy; ``None`` is the
operator at the command line (who holds the database credentials, hence every power).
"""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from haven.auth.passwords import hash_password
from haven.auth.policy import Action, authorize
from haven.auth.principal import Principal
from haven.db.repositories import AuditLog, PlatformRepository
from haven.db.tables import Role, Tenant, User
from haven.errors import Conflict, NotFound


def create_tenant(
    session: Session, audit: AuditLog, *, slug: str, name: str, token_budget: int | None = None
) -> Tenant:
    platform = PlatformRepository(session)
    if platform.tenant_by_slug(slug) is not None:
        raise Conflict(f"tenant {slug!r} already exists", code="tenant.exists")
    tenant = platform.add_tenant(Tenant(slug=slug, name=name, token_budget=token_budget))
    audit.record(
        "tenant.create", target_type="tenant", target_id=tenant.id, tenant_id=tenant.id, slug=slug
    )
    return tenant


def create_user(
    session: Session,
    audit: AuditLog,
    *,
    tenant_id: uuid.UUID,
    username: str,
    password: str,
    role: Role,
    actor: Principal | None,
) -> User:
    if actor is not None:
        authorize(actor, Action.CREATE_USER, grants=role)
    platform = PlatformRepository(session)
    if platform.tenant(tenant_id) is None:
        raise NotFound("tenant", tenant_id)
    if platform.username_taken(username):
        raise Conflict(f"username {username!r} is taken", code="user.username_taken")
    user = platform.add_user(
        User(
            tenant_id=tenant_id,
            username=username,
            password_hash=hash_password(password),
            role=role,
        )
    )
    audit.record(
        "user.create",
        target_type="user",
        target_id=user.id,
        tenant_id=tenant_id,
        username=username,
        role=role.value,
    )
    return user
