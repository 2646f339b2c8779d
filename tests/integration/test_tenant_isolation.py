"""Tenant B never reaches tenant A's objects: every route that takes an object id answers 404.

The test walks the application's route table, so a new route with an id parameter is covered
the day it is added; if no factory below knows how to make that kind of object, the test fails
and says which factory to add.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from fastapi.testclient import TestClient

from haven.db.tables import Role
from haven.telemetry import http_routes
from tests.fixtures.api import Account, create_user


@dataclass(frozen=True)
class Factory:
    create: Callable[[TestClient, Account], str]
    exists: Callable[[TestClient, Account, str], bool]


def _make_user(client: TestClient, owner: Account) -> str:
    return str(create_user(client, owner, Role.VIEWER).user_id)


def _user_exists(client: TestClient, owner: Account, user_id: str) -> bool:
    return client.get(f"/api/v1/admin/users/{user_id}", headers=owner.headers).status_code == 200


def _make_api_key(client: TestClient, owner: Account) -> str:
    response = client.post("/api/v1/admin/api-keys", json={"name": "ci"}, headers=owner.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _api_key_untouched(client: TestClient, owner: Account, key_id: str) -> bool:
    keys = client.get("/api/v1/admin/api-keys", headers=owner.headers).json()
    return any(k["id"] == key_id and k["revoked_at"] is None for k in keys)


# One entry per path parameter that names a tenant-owned object.
FACTORIES: dict[str, Factory] = {
    "user_id": Factory(_make_user, _user_exists),
    "key_id": Factory(_make_api_key, _api_key_untouched),
}

# Bodies valid for the route's schema, so that validation (422) cannot hide the 404.
BODIES: dict[tuple[str, str], dict[str, object]] = {
    ("PATCH", "/api/v1/admin/users/{user_id}"): {"role": "editor"},
}


def _id_routes(client: TestClient) -> list[tuple[str, str, list[str]]]:
    """(method, path template, path parameters) of every route that takes a path parameter."""
    routes = []
    for route in http_routes(client.app):
        params = re.findall(r"{(\w+)(?::\w+)?}", route.path)
        if params:
            routes.extend((method, route.path, params) for method in sorted(route.methods))
    return routes


def test_every_id_route_hides_other_tenants_objects(
    api_client: TestClient, tenant_a: Account, tenant_b: Account
) -> None:
    routes = _id_routes(api_client)
    assert routes, "the app has routes with object ids"
    missing = sorted({p for _, _, params in routes for p in params if p not in FACTORIES})
    assert not missing, f"add a factory to FACTORIES for path parameters: {missing}"

    for method, template, params in routes:
        ids = {name: FACTORIES[name].create(api_client, tenant_a) for name in params}
        path = template.format(**ids)
        body = BODIES.get((method, template))
        response = api_client.request(method, path, headers=tenant_b.headers, json=body)
        assert response.status_code == 404, (
            f"{method} {template} as another tenant answered "
            f"{response.status_code}: {response.text}"
        )
        assert tenant_a.tenant_slug not in response.text
        for name, object_id in ids.items():
            assert FACTORIES[name].exists(api_client, tenant_a, object_id), (
                f"{method} {template} by another tenant changed {name} {object_id}"
            )

        # Unknown ids are 404 as well, never 500.
        unknown = template.format(**{n: uuid.uuid4() for n in params})
        response = api_client.request(method, unknown, headers=tenant_a.headers, json=body)
        assert response.status_code == 404, f"{method} {unknown}: {response.text}"


def test_lists_show_only_own_tenant(
    api_client: TestClient, tenant_a: Account, tenant_b: Account
) -> None:
    _make_user(api_client, tenant_a)
    _make_api_key(api_client, tenant_a)
    users_b = api_client.get("/api/v1/admin/users", headers=tenant_b.headers).json()
    keys_b = api_client.get("/api/v1/admin/api-keys", headers=tenant_b.headers).json()
    audit_b = api_client.get("/api/v1/admin/audit", headers=tenant_b.headers).json()
    assert {u["tenant_id"] for u in users_b} == {str(tenant_b.tenant_id)}
    assert keys_b == []
    assert all(entry["tenant_id"] == str(tenant_b.tenant_id) for entry in audit_b)
