from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from haven.db.tables import Role


class TokenRead(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type
    expires_at: datetime


class ApiKeyExchange(BaseModel):
    api_key: str = Field(min_length=8, max_length=200)


class MeRead(BaseModel):
    subject_id: uuid.UUID
    kind: str
    tenant_id: uuid.UUID
    tenant_slug: str
    role: Role
    username: str | None


class PasswordChange(BaseModel):
    current_password: str = Field(min_length=1, max_length=200)
    new_password: str = Field(min_length=10, max_length=200)
