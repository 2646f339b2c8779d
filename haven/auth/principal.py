"""The authenticated caller, as every layer below the HTTP edge sees it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

from haven.db.tables import Role

ROLE_RANK = {Role.VIEWER: 0, Role.EDITOR: 1, Role.TENANT_ADMIN: 2, Role.ADMIN: 3}


@dataclass(frozen=True, slots=True)
class Principal:
    subject_id: uuid.UUID
    tenant_id: uuid.UUID
    role: Role
    kind: Literal["user", "api_key"] = "user"
    token_id: str | None = None
    # The user's token version when the token was issued; raising it ends every session
    # (password change, disable, role change). API keys have none.
    version: int = 0

    def has_role(self, needed: Role) -> bool:
        """Roles nest: viewer < editor < tenant_admin < admin (platform)."""
        return ROLE_RANK[self.role] >= ROLE_RANK[needed]

    @property
    def is_platform_admin(self) -> bool:
        return self.role is Role.ADMIN
