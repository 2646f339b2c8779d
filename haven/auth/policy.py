"""Who may manage whom: the one check every admin mutation goes through (API and CLI).

Roles are a hierarchy (viewer < editor < tenant_admin < platform admin) and it holds for every
action: nobody creates, modifies, disables, deletes or issues keys for a user whose role is
above their own, nor grants a role above their own, nor sets the password of another user of
equal or higher role (their own goes through the self-service change, which asks for the old
one). A user of another tenant is not found. A platform admin ranks above every tenant role,
so only a platform admin manages one.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

from haven.auth.principal import ROLE_RANK, Principal
from haven.db.tables import Role
from haven.errors import Forbidden, NotFound

TENANT_ROLES = (Role.VIEWER, Role.EDITOR, Role.TENANT_ADMIN)


class Action(enum.StrEnum):
    CREATE_USER = "user.create"
    UPDATE_USER = "user.update"
    SET_PASSWORD = "user.set_password"  # noqa: S105 - an action name
    DISABLE_USER = "user.disable"
    DELETE_USER = "user.delete"
    CREATE_API_KEY = "api_key.create"
    REVOKE_API_KEY = "api_key.revoke"


@dataclass(frozen=True, slots=True)
class Target:
    """The account acted upon: a user, or an API key (which has a role but no password)."""

    tenant_id: uuid.UUID
    role: Role
    subject_id: uuid.UUID | None = None
    kind: str = "user"


def authorize(
    actor: Principal, action: Action, target: Target | None = None, *, grants: Role | None = None
) -> None:
    """Raise ``NotFound`` or ``Forbidden`` unless ``actor`` may do ``action`` to ``target``,
    giving it the role ``grants`` (a new user's, a changed role, a new key's)."""
    if target is not None:
        if target.tenant_id != actor.tenant_id:
            raise NotFound(target.kind.replace("_", " "), target.subject_id)
        if ROLE_RANK[target.role] > ROLE_RANK[actor.role]:
            raise Forbidden(
                f"a {actor.role} cannot manage a {target.kind.replace('_', ' ')}"
                f" with the {target.role} role",
                code="role.above_yours",
            )
        if (
            action is Action.SET_PASSWORD
            and ROLE_RANK[target.role] >= ROLE_RANK[actor.role]
            and target.subject_id != actor.subject_id
        ):
            raise Forbidden(
                "you can set the password only of users below your role",
                code="role.not_below_yours",
            )
        if action is Action.SET_PASSWORD and target.subject_id == actor.subject_id:
            raise Forbidden(
                "change your own password with POST /api/v1/auth/password (it needs the old one)",
                code="password.self_service",
            )
    if grants is not None:
        if action is Action.CREATE_API_KEY and grants not in TENANT_ROLES:
            raise Forbidden("API keys carry tenant roles only", code="role.not_grantable")
        if ROLE_RANK[grants] > ROLE_RANK[actor.role]:
            raise Forbidden(
                f"a {actor.role} cannot grant the {grants} role", code="role.above_yours"
            )
