"""All SQL lives here. Repositories receive a session and never commit.

Tenant-owned tables are reached only through ``TenantRepository`` subclasses, which take the
tenant from the authenticated ``Principal`` and add the filter to every query themselves, so a
forgotten filter is impossible rather than unlikely. Another tenant's row is simply not found.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from haven.auth.principal import Principal
from haven.db.tables import ApiKey, AuditEntry, Base, Tenant, User


class NotFound(Exception):
    """The object does not exist for this caller (which includes: it is another tenant's)."""

    def __init__(self, what: str, object_id: object) -> None:
        super().__init__(f"{what} {object_id} not found")
        self.what = what


ModelT = TypeVar("ModelT", bound=Base)


class TenantRepository(Generic[ModelT]):
    model: ClassVar[type[Any]]
    label: ClassVar[str]

    def __init__(self, session: Session, principal: Principal) -> None:
        self.session = session
        self.principal = principal
        self.tenant_id = principal.tenant_id

    def _select(self) -> Select[ModelT]:
        return select(self.model).where(self.model.tenant_id == self.tenant_id)

    def get(self, object_id: uuid.UUID) -> ModelT | None:
        stmt = self._select().where(self.model.id == object_id)
        return self.session.execute(stmt).scalar_one_or_none()

    def require(self, object_id: uuid.UUID) -> ModelT:
        found = self.get(object_id)
        if found is None:
            raise NotFound(self.label, object_id)
        return found

    def list(self, *, offset: int = 0, limit: int = 50) -> Sequence[ModelT]:
        stmt = self._select().order_by(self.model.created_at.desc()).offset(offset).limit(limit)
        return self.session.execute(stmt).scalars().all()

    def count(self) -> int:
        stmt = (
            select(func.count())
            .select_from(self.model)
            .where(self.model.tenant_id == self.tenant_id)
        )
        return int(self.session.execute(stmt).scalar_one())

    def add(self, obj: ModelT) -> ModelT:
        obj.tenant_id = self.tenant_id  # type: ignore[attr-defined]
        self.session.add(obj)
        self.session.flush()
        return obj

    def delete(self, obj: ModelT) -> None:
        if obj.tenant_id != self.tenant_id:  # type: ignore[attr-defined]
            raise NotFound(self.label, obj.id)  # type: ignore[attr-defined]
        self.session.delete(obj)
        self.session.flush()


class UserRepository(TenantRepository[User]):
    model = User
    label = "user"

    def by_username(self, username: str) -> User | None:
        stmt = self._select().where(User.username == username)
        return self.session.execute(stmt).scalar_one_or_none()


class ApiKeyRepository(TenantRepository[ApiKey]):
    model = ApiKey
    label = "api key"


class AuditRepository(TenantRepository[AuditEntry]):
    model = AuditEntry
    label = "audit entry"

    def list(self, *, offset: int = 0, limit: int = 50) -> Sequence[AuditEntry]:
        stmt = self._select().order_by(AuditEntry.id.desc()).offset(offset).limit(limit)
        return self.session.execute(stmt).scalars().all()


class AuditLog:
    """Writes audit rows. Every admin action calls ``record`` in the same transaction."""

    def __init__(self, session: Session, actor: Principal | None, request_id: str | None) -> None:
        self.session = session
        self.actor = actor
        self.request_id = request_id

    def record(
        self,
        action: str,
        *,
        target_type: str,
        target_id: object | None,
        tenant_id: uuid.UUID | None,
        **details: Any,
    ) -> AuditEntry:
        entry = AuditEntry(
            tenant_id=tenant_id,
            actor_id=self.actor.subject_id if self.actor else None,
            actor_kind=self.actor.kind if self.actor else "cli",
            action=action,
            target_type=target_type,
            target_id=str(target_id) if target_id is not None else None,
            details=details,
            request_id=self.request_id,
        )
        self.session.add(entry)
        self.session.flush()
        return entry


class PlatformRepository:
    """Queries that are not scoped to one tenant: the tenants themselves, and the credential
    look-ups that run before anyone is authenticated (login by unique username, an API key by
    its unique prefix). Nothing here returns tenant-owned content."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def tenants(self) -> Sequence[Tenant]:
        return self.session.execute(select(Tenant).order_by(Tenant.created_at)).scalars().all()

    def tenant(self, tenant_id: uuid.UUID) -> Tenant | None:
        return self.session.get(Tenant, tenant_id)

    def tenant_by_slug(self, slug: str) -> Tenant | None:
        stmt = select(Tenant).where(Tenant.slug == slug)
        return self.session.execute(stmt).scalar_one_or_none()

    def add_tenant(self, tenant: Tenant) -> Tenant:
        self.session.add(tenant)
        self.session.flush()
        return tenant

    def user_for_login(self, username: str) -> User | None:
        stmt = select(User).where(User.username == username)
        return self.session.execute(stmt).scalar_one_or_none()

    def user_by_id(self, user_id: uuid.UUID) -> User | None:
        return self.session.get(User, user_id)

    def username_taken(self, username: str) -> bool:
        return self.user_for_login(username) is not None

    def api_key_for_exchange(self, prefix: str) -> ApiKey | None:
        stmt = select(ApiKey).where(ApiKey.prefix == prefix)
        return self.session.execute(stmt).scalar_one_or_none()

    def touch_api_key(self, key: ApiKey) -> None:
        key.last_used_at = datetime.now(UTC)
        self.session.flush()
