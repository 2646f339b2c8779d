from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from haven.contracts.text import Name
from haven.db.tables import Role

USERNAME = Field(min_length=3, max_length=200, pattern=r"^[A-Za-z0-9._@+-]+$")
PASSWORD = Field(min_length=10, max_length=200)


class TenantCreate(BaseModel):
    slug: str = Field(min_length=2, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$")
    name: Name
    token_budget: int | None = Field(default=None, ge=0)
    admin_username: str | None = USERNAME
    admin_password: str | None = Field(default=None, min_length=10, max_length=200)


class TenantUpdate(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    # Disabling refuses every request of the tenant's users and keys at once.
    is_active: bool | None = None
    token_budget: int | None = Field(default=None, ge=0)


class TenantDeleted(BaseModel):
    """What deleting a tenant removed, store by store."""

    id: uuid.UUID
    slug: str
    rows: dict[str, int] = Field(description="rows deleted per table")
    objects: int
    vectors: int
    cache_entries: int


class TenantRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    slug: str
    name: str
    is_active: bool
    token_budget: int | None
    created_at: datetime


class UserCreate(BaseModel):
    username: str = USERNAME
    password: str = PASSWORD
    role: Role = Role.VIEWER


class UserUpdate(BaseModel):
    role: Role | None = None
    password: str | None = Field(default=None, min_length=10, max_length=200)
    is_active: bool | None = None


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    tenant_id: uuid.UUID
    username: str
    role: Role
    is_active: bool
    created_at: datetime


class ApiKeyCreate(BaseModel):
    name: Name
    role: Role = Role.EDITOR
    # With its time zone: a bare local time would be read as UTC by some and not by others.
    expires_at: AwareDatetime | None = None


class ApiKeyRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    prefix: str
    role: Role
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class ApiKeyCreated(ApiKeyRead):
    api_key: str = Field(description="The key itself. It is shown only this once.")


class AuditRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    tenant_id: uuid.UUID | None
    actor_id: uuid.UUID | None
    actor_kind: str
    action: str
    target_type: str
    target_id: str | None
    details: dict[str, Any]
    request_id: str | None
    created_at: datetime
