"""The role hierarchy, as the one check every admin mutation goes through applies it."""

from __future__ import annotations

import uuid

import pytest

from haven.auth.policy import Action, Target, authorize
from haven.auth.principal import ROLE_RANK, Principal
from haven.db.tables import Role
from haven.errors import Forbidden, NotFound

TENANT = uuid.uuid4()
OTHER = uuid.uuid4()
ROLES = list(Role)


def actor(role: Role) -> Principal:
    return Principal(subject_id=uuid.uuid4(), tenant_id=TENANT, role=role)


def target(role: Role, tenant: uuid.UUID = TENANT) -> Target:
    return Target(tenant_id=tenant, role=role, subject_id=uuid.uuid4())


MANAGE = [Action.UPDATE_USER, Action.DISABLE_USER, Action.DELETE_USER]


@pytest.mark.parametrize("action", MANAGE)
@pytest.mark.parametrize("who", ROLES)
@pytest.mark.parametrize("whom", ROLES)
def test_nobody_manages_a_role_above_their_own(action: Action, who: Role, whom: Role) -> None:
    if ROLE_RANK[whom] > ROLE_RANK[who]:
        with pytest.raises(Forbidden):
            authorize(actor(who), action, target(whom))
    else:
        authorize(actor(who), action, target(whom))


@pytest.mark.parametrize("who", ROLES)
@pytest.mark.parametrize("whom", ROLES)
def test_passwords_are_set_only_below_ones_role(who: Role, whom: Role) -> None:
    if ROLE_RANK[whom] >= ROLE_RANK[who]:
        with pytest.raises(Forbidden):
            authorize(actor(who), Action.SET_PASSWORD, target(whom))
    else:
        authorize(actor(who), Action.SET_PASSWORD, target(whom))


def test_ones_own_password_goes_through_the_self_service_change() -> None:
    me = actor(Role.ADMIN)
    mine = Target(tenant_id=TENANT, role=Role.ADMIN, subject_id=me.subject_id)
    with pytest.raises(Forbidden, match="/api/v1/auth/password"):
        authorize(me, Action.SET_PASSWORD, mine)


@pytest.mark.parametrize("action", [*MANAGE, Action.SET_PASSWORD, Action.REVOKE_API_KEY])
def test_another_tenants_account_is_not_found_even_for_the_platform_admin(action: Action) -> None:
    with pytest.raises(NotFound):
        authorize(actor(Role.ADMIN), action, target(Role.VIEWER, OTHER))


@pytest.mark.parametrize("who", ROLES)
@pytest.mark.parametrize("grants", ROLES)
def test_nobody_grants_a_role_above_their_own(who: Role, grants: Role) -> None:
    for action in (Action.CREATE_USER, Action.UPDATE_USER):
        if ROLE_RANK[grants] > ROLE_RANK[who]:
            with pytest.raises(Forbidden):
                authorize(actor(who), action, grants=grants)
        else:
            authorize(actor(who), action, grants=grants)


def test_api_keys_carry_tenant_roles_only() -> None:
    with pytest.raises(Forbidden, match="tenant roles only"):
        authorize(actor(Role.ADMIN), Action.CREATE_API_KEY, grants=Role.ADMIN)
    authorize(actor(Role.TENANT_ADMIN), Action.CREATE_API_KEY, grants=Role.TENANT_ADMIN)
