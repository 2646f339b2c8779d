"""Nobody manages an account above their own role, in another tenant, or the platform admin.

As a viewer, an editor and a tenant admin of tenant A, every admin mutation is tried against
every account it must not reach: users of higher roles in A, the users of tenant B, and the
platform admin (who lives in tenant A, as on a fresh install). Each attempt must be refused
(403 or 404), change nothing in PostgreSQL, and leave an audit row saying it was refused.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.main import create_app
from api.settings import ApiSettings
from haven.auth import accounts
from haven.db.engine import transaction
from haven.db.repositories import AuditLog
from haven.db.tables import ApiKey, AuditEntry, Role, Tenant, User
from tests.fixtures.api import PASSWORD, login, unique
from tests.fixtures.services import TEST_BROKER_URL, TEST_REDIS_URL

ACTORS = ("viewer", "editor", "tenant_admin")
RANK = {"viewer": 0, "editor": 1, "tenant_admin": 2, "root": 3}


@dataclass(frozen=True)
class Person:
    user_id: uuid.UUID
    username: str
    role: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass(frozen=True)
class World:
    client: TestClient
    factory: sessionmaker[Session]
    tenant_a: uuid.UUID
    tenant_b: uuid.UUID
    people: dict[str, Person]  # "a:viewer", "a:root", "b:tenant_admin" ...
    key_b: str  # an API key of tenant B


@pytest.fixture(scope="module")
def world(
    database_url: str, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """One installation for the whole module: every attempt is refused, so none changes it."""
    settings = ApiSettings(
        env="test",
        log_json=False,
        database_url=database_url,
        redis_url=TEST_REDIS_URL,
        broker_url=TEST_BROKER_URL,
        s3_endpoint=s3_endpoint,
        s3_bucket=f"haven-{uuid.uuid4().hex[:12]}",
        qdrant_path=Path(tmp_path_factory.mktemp("qdrant")),
        signin_attempts_per_address=10_000,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        factory: sessionmaker[Session] = client.app.state.runtime.session_factory  # type: ignore[attr-defined]
        people: dict[str, Person] = {}
        tenants: dict[str, uuid.UUID] = {}
        with transaction(factory) as session:
            audit = AuditLog(session, None, None)
            for name in ("a", "b"):
                tenants[name] = accounts.create_tenant(
                    session, audit, slug=unique(name), name=name
                ).id
            roles = [("a", "root", Role.ADMIN), ("a", "peer_admin", Role.TENANT_ADMIN)] + [
                (t, r, Role(r)) for t in ("a", "b") for r in ("viewer", "editor", "tenant_admin")
            ]
            created = {
                f"{t}:{r}": accounts.create_user(
                    session,
                    audit,
                    tenant_id=tenants[t],
                    username=f"{unique(r)}@{t}",
                    password=PASSWORD,
                    role=role,
                    actor=None,
                )
                for t, r, role in roles
            }
            identities = {k: (u.id, u.username, u.role.value) for k, u in created.items()}
        for key, (user_id, username, role) in identities.items():
            people[key] = Person(user_id, username, role, login(client, username))
        response = client.post(
            "/api/v1/admin/api-keys",
            json={"name": "b-app", "role": "viewer"},
            headers=people["b:tenant_admin"].headers,
        )
        assert response.status_code == 201, response.text
        yield World(client, factory, tenants["a"], tenants["b"], people, response.json()["id"])


def snapshot(factory: sessionmaker[Session]) -> list[tuple[Any, ...]]:
    """Everything an admin mutation could change, as plain values."""
    with transaction(factory) as session:
        users = session.execute(
            select(
                User.id,
                User.tenant_id,
                User.username,
                User.role,
                User.is_active,
                User.password_hash,
                User.token_version,
            ).order_by(User.id)
        ).all()
        keys = session.execute(
            select(ApiKey.id, ApiKey.role, ApiKey.revoked_at, ApiKey.name).order_by(ApiKey.id)
        ).all()
        tenants = session.execute(
            select(Tenant.id, Tenant.slug, Tenant.name, Tenant.is_active).order_by(Tenant.id)
        ).all()
    return [tuple(row) for row in [*users, *keys, *tenants]]


def audit_rows(factory: sessionmaker[Session], actor_id: uuid.UUID) -> list[AuditEntry]:
    with transaction(factory) as session:
        stmt = select(AuditEntry).where(AuditEntry.actor_id == actor_id).order_by(AuditEntry.id)
        return list(session.execute(stmt).scalars().all())


# -- the attempts ---------------------------------------------------------------------------

USER_MUTATIONS: dict[str, tuple[str, dict[str, Any] | None, str]] = {
    # name: (method, body, audited action)
    "set_password": ("PATCH", {"password": "taken-over-12345"}, "user.update"),
    "disable": ("PATCH", {"is_active": False}, "user.update"),
    "change_role": ("PATCH", {"role": "viewer"}, "user.update"),
    "promote": ("PATCH", {"role": "tenant_admin"}, "user.update"),
    "delete": ("DELETE", None, "user.delete"),
}


def _targets_for(actor: str) -> list[str]:
    above = [f"a:{r}" for r in ("editor", "tenant_admin", "root") if RANK[r] > RANK[actor]]
    return [*above, "b:viewer", "b:editor", "b:tenant_admin"]


USER_CASES = [
    pytest.param(actor, target, mutation, id=f"{actor}->{target}:{mutation}")
    for actor in ACTORS
    for target in _targets_for(actor)
    for mutation in USER_MUTATIONS
]


def _attempt(
    world: World, actor: str, method: str, path: str, body: dict[str, Any] | None, action: str
) -> None:
    person = world.people[f"a:{actor}"]
    before = snapshot(world.factory)
    audited_before = len(audit_rows(world.factory, person.user_id))

    response = world.client.request(method, path, json=body, headers=person.headers)

    assert response.status_code in (403, 404), f"{method} {path}: {response.text}"
    assert snapshot(world.factory) == before, f"{method} {path} changed PostgreSQL"
    audited = audit_rows(world.factory, person.user_id)[audited_before:]
    assert [(e.action, e.details["code"]) for e in audited] == [
        (f"{action}.refused", response.json()["code"])
    ]


@pytest.mark.parametrize(("actor", "target", "mutation"), USER_CASES)
def test_user_mutations_above_or_outside_are_refused(
    world: World, actor: str, target: str, mutation: str
) -> None:
    method, body, action = USER_MUTATIONS[mutation]
    victim = world.people[target]
    _attempt(world, actor, method, f"/api/v1/admin/users/{victim.user_id}", body, action)
    # The victim's session is untouched, and the password was not changed.
    assert world.client.get("/api/v1/me", headers=victim.headers).status_code == 200


# Viewers and editors may create nobody; a tenant admin nobody above a tenant admin.
CREATE_CASES = [
    pytest.param(actor, role, id=f"{actor}->{role}")
    for actor in ACTORS
    for role in ("admin", "tenant_admin", "editor")
    if actor != "tenant_admin" or role == "admin"
]


def test_a_tenant_admin_cannot_set_a_peers_password(world: World) -> None:
    """Equal roles may manage each other, but not take over each other's account."""
    peer = world.people["a:peer_admin"]
    method, body, action = USER_MUTATIONS["set_password"]
    _attempt(world, "tenant_admin", method, f"/api/v1/admin/users/{peer.user_id}", body, action)
    assert world.client.get("/api/v1/me", headers=peer.headers).status_code == 200


@pytest.mark.parametrize(("actor", "role"), CREATE_CASES)
def test_creating_a_user_above_ones_role_is_refused(world: World, actor: str, role: str) -> None:
    body = {"username": f"{unique('new')}@a", "password": PASSWORD, "role": role}
    _attempt(world, actor, "POST", "/api/v1/admin/users", body, "user.create")


KEY_CASES = [
    pytest.param(actor, role, id=f"{actor}->{role}")
    for actor in ACTORS
    for role in ("admin", "tenant_admin")
    if actor != "tenant_admin" or role == "admin"
]


@pytest.mark.parametrize(("actor", "role"), KEY_CASES)
def test_issuing_a_key_above_ones_role_is_refused(world: World, actor: str, role: str) -> None:
    body = {"name": "escalate", "role": role}
    _attempt(world, actor, "POST", "/api/v1/admin/api-keys", body, "api_key.create")


@pytest.mark.parametrize("actor", ACTORS)
def test_revoking_another_tenants_key_is_refused(world: World, actor: str) -> None:
    path = f"/api/v1/admin/api-keys/{world.key_b}"
    _attempt(world, actor, "DELETE", path, None, "api_key.revoke")


TENANT_MUTATIONS = {
    "create": ("POST", "/api/v1/admin/tenants", {"slug": "escalated", "name": "x"}),
    "disable": ("PATCH", "/api/v1/admin/tenants/{b}", {"is_active": False}),
    "delete": ("DELETE", "/api/v1/admin/tenants/{b}", None),
}


@pytest.mark.parametrize("actor", ACTORS)
@pytest.mark.parametrize("mutation", list(TENANT_MUTATIONS))
def test_tenant_mutations_need_the_platform_admin(world: World, actor: str, mutation: str) -> None:
    method, path, body = TENANT_MUTATIONS[mutation]
    action = f"tenant.{'update' if mutation == 'disable' else mutation}"
    _attempt(world, actor, method, path.format(b=world.tenant_b), body, action)


def test_the_platform_admin_still_manages_everyone(world: World) -> None:
    """The refusals above are about roles, not a broken route: the platform admin of A may
    set the password of A's tenant admin (a lower role) and sign in with it."""
    root, admin_a = world.people["a:root"], world.people["a:tenant_admin"]
    new_password = "reset-by-root-123"
    response = world.client.patch(
        f"/api/v1/admin/users/{admin_a.user_id}",
        json={"password": new_password},
        headers=root.headers,
    )
    assert response.status_code == 200, response.text
    assert login(world.client, admin_a.username, new_password)
    # Set back, so the module's other tests see the world they expect.
    world.client.patch(
        f"/api/v1/admin/users/{admin_a.user_id}", json={"password": PASSWORD}, headers=root.headers
    )
    world.people["a:tenant_admin"] = Person(
        admin_a.user_id, admin_a.username, admin_a.role, login(world.client, admin_a.username)
    )
