"""Sign-in and password changes: the database parts, each a short transaction of its own, so
the password checks between them (argon2, slow on purpose) hold no database slot."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from api.runtime import ApiRuntime
from haven.auth.principal import Principal
from haven.auth.state import CallerState
from haven.db.engine import transaction
from haven.db.repositories import AuditLog, PlatformRepository
from haven.db.tables import Role, User
from haven.errors import Conflict, Unauthenticated


@dataclass(frozen=True, slots=True)
class Account:
    """What signing in needs of a user, read and detached from its session."""

    user_id: uuid.UUID
    tenant_id: uuid.UUID
    username: str
    role: Role
    password_hash: str
    token_version: int
    can_sign_in: bool

    @property
    def principal(self) -> Principal:
        return Principal(
            subject_id=self.user_id,
            tenant_id=self.tenant_id,
            role=self.role,
            version=self.token_version,
        )


def _account(platform: PlatformRepository, user: User | None) -> Account | None:
    if user is None:
        return None
    tenant = platform.tenant(user.tenant_id)
    return Account(
        user_id=user.id,
        tenant_id=user.tenant_id,
        username=user.username,
        role=user.role,
        password_hash=user.password_hash,
        token_version=user.token_version,
        can_sign_in=user.is_active and tenant is not None and tenant.is_active,
    )


def account_for_login(runtime: ApiRuntime, username: str) -> Account | None:
    with transaction(runtime.session_factory) as session:
        platform = PlatformRepository(session)
        return _account(platform, platform.user_for_login(username))


def account_by_id(runtime: ApiRuntime, principal: Principal) -> Account | None:
    with transaction(runtime.session_factory) as session:
        platform = PlatformRepository(session)
        return _account(platform, platform.user_by_id(principal.subject_id))


def set_own_password(
    runtime: ApiRuntime,
    principal: Principal,
    checked_version: int,
    password_hash: str,
    request_id: str | None,
) -> Principal:
    """Store the new password and end every session (the token version goes up); the
    principal for this session's new token."""
    with transaction(runtime.session_factory) as session:
        platform = PlatformRepository(session)
        user = platform.user_for_update(principal.subject_id)
        if user is None or not user.is_active:
            raise Unauthenticated("account is disabled or deleted", code="account.disabled")
        if user.token_version != checked_version:
            # Changed by someone else since the old password was checked.
            raise Conflict("the account changed meanwhile; try again", code="password.race")
        user.password_hash = password_hash
        user.token_version += 1
        session.flush()
        runtime.auth.publish_after_commit(
            session, subjects={("user", user.id): CallerState.of_user(user)}
        )
        AuditLog(session, principal, request_id).record(
            "user.password_change",
            target_type="user",
            target_id=user.id,
            tenant_id=user.tenant_id,
            username=user.username,
        )
        return Principal(
            subject_id=user.id,
            tenant_id=user.tenant_id,
            role=user.role,
            version=user.token_version,
        )
