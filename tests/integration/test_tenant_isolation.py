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
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from haven.db.engine import transaction
from haven.db.tables import DeadLetter, Role, Upload
from haven.telemetry import http_routes
from tests.fixtures import review_archives
from tests.fixtures.analyses import upload_ready
from tests.fixtures.api import Account, create_user


@dataclass(frozen=True)
class World:
    client: TestClient
    session_factory: sessionmaker[Session]


@dataclass(frozen=True)
class Factory:
    create: Callable[[World, Account], str]
    exists: Callable[[World, Account, str], bool]


def _ok(world: World, owner: Account, path: str) -> bool:
    return world.client.get(path, headers=owner.headers).status_code == 200


def _make_user(world: World, owner: Account) -> str:
    return str(create_user(world.client, owner, Role.VIEWER).user_id)


def _make_api_key(world: World, owner: Account) -> str:
    response = world.client.post(
        "/api/v1/admin/api-keys", json={"name": "ci"}, headers=owner.headers
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _api_key_untouched(world: World, owner: Account, key_id: str) -> bool:
    keys = world.client.get("/api/v1/admin/api-keys", headers=owner.headers).json()
    return any(k["id"] == key_id and k["revoked_at"] is None for k in keys)


def _upload(world: World, owner: Account) -> dict[str, Any]:
    response = world.client.post(
        "/api/v1/documents",
        files={"file": ("a.txt", f"isolated {uuid.uuid4()}".encode(), "text/plain")},
        headers=owner.headers,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _make_document(world: World, owner: Account) -> str:
    return str(_upload(world, owner)["document"]["id"])


def _make_job(world: World, owner: Account) -> str:
    return str(_upload(world, owner)["job_id"])


def _job_untouched(world: World, owner: Account, job_id: str) -> bool:
    job = world.client.get(f"/api/v1/jobs/{job_id}", headers=owner.headers).json()
    return bool(job["state"] == "queued" and not job["cancel_requested"])


def _make_upload(world: World, owner: Account) -> str:
    response = world.client.post(
        "/api/v1/documents/uploads", json={"filename": "x.txt"}, headers=owner.headers
    )
    assert response.status_code == 201, response.text
    return str(response.json()["upload_id"])


def _upload_untouched(world: World, owner: Account, upload_id: str) -> bool:
    with transaction(world.session_factory) as session:
        found = session.get(Upload, uuid.UUID(upload_id))
        return found is not None and found.completed_at is None


def _make_dead_letter(world: World, owner: Account) -> str:
    job_id = uuid.UUID(_make_job(world, owner))
    with transaction(world.session_factory) as session:
        letter = DeadLetter(
            tenant_id=owner.tenant_id,
            job_id=job_id,
            message_id=str(uuid.uuid4()),
            task="ingest.document",
            queue="ingest",
            reason="test",
        )
        session.add(letter)
        session.flush()
        return str(letter.id)


def _dead_letter_untouched(world: World, owner: Account, letter_id: str) -> bool:
    with transaction(world.session_factory) as session:
        found = session.get(DeadLetter, uuid.UUID(letter_id))
        return found is not None and found.replayed_at is None


# One entry per path parameter that names a tenant-owned object.
def _make_chat(world: World, owner: Account) -> str:
    response = world.client.post("/api/v1/chats", json={"title": "plans"}, headers=owner.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _chat_untouched(world: World, owner: Account, chat_id: str) -> bool:
    response = world.client.get(f"/api/v1/chats/{chat_id}", headers=owner.headers)
    return response.status_code == 200 and response.json()["title"] == "plans"


def _make_tenant(world: World, owner: Account) -> str:
    return str(owner.tenant_id)


def _tenant_untouched(world: World, owner: Account, tenant_id: str) -> bool:
    return world.client.get("/api/v1/me", headers=owner.headers).status_code == 200


def _make_analysis(world: World, owner: Account) -> str:
    ready = upload_ready(
        world.client, world.session_factory, owner, f"analysed {uuid.uuid4()}".encode()
    )
    response = world.client.post(
        "/api/v1/analyses",
        json={"document_ids": [ready["document"]["id"]], "kind": "summary"},
        headers=owner.headers,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _make_review(world: World, owner: Account) -> str:
    response = world.client.post(
        "/api/v1/reviews",
        data={"student_id": "s-1", "assignment_id": "hw", "new_commit": uuid.uuid4().hex},
        files={"new_zip": ("new.zip", review_archives.project_old(), "application/zip")},
        headers=owner.headers,
    )
    assert response.status_code == 202, response.text
    return str(response.json()["task_id"])


def _make_run(world: World, owner: Account) -> str:
    response = world.client.post(
        "/api/v1/runs", json={"language": "python", "code": "print(1)"}, headers=owner.headers
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _make_pattern(world: World, owner: Account) -> str:
    response = world.client.post(
        "/api/v1/admin/error-patterns",
        json={"error_type": "ValueError", "title": "A value", "explanation": "Check it."},
        headers=owner.headers,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _make_run_access(world: World, owner: Account) -> str:
    user_id = _make_user(world, owner)
    response = world.client.put(
        "/api/v1/admin/run-access",
        json={"subject_kind": "user", "subject_id": user_id, "daily_quota": 5},
        headers=owner.headers,
    )
    assert response.status_code == 200, response.text
    return user_id


def _run_access_untouched(world: World, owner: Account, user_id: str) -> bool:
    entries = world.client.get("/api/v1/admin/run-access", headers=owner.headers).json()
    return any(e["subject_id"] == user_id for e in entries)


FACTORIES: dict[str, Factory] = {
    "tenant_id": Factory(_make_tenant, _tenant_untouched),
    "user_id": Factory(_make_user, lambda w, o, i: _ok(w, o, f"/api/v1/admin/users/{i}")),
    "key_id": Factory(_make_api_key, _api_key_untouched),
    "document_id": Factory(_make_document, lambda w, o, i: _ok(w, o, f"/api/v1/documents/{i}")),
    "job_id": Factory(_make_job, _job_untouched),
    "upload_id": Factory(_make_upload, _upload_untouched),
    "dead_letter_id": Factory(_make_dead_letter, _dead_letter_untouched),
    "chat_id": Factory(_make_chat, _chat_untouched),
    "analysis_id": Factory(_make_analysis, lambda w, o, i: _ok(w, o, f"/api/v1/analyses/{i}")),
    "task_id": Factory(_make_review, lambda w, o, i: _ok(w, o, f"/api/v1/reviews/{i}")),
    "run_id": Factory(_make_run, lambda w, o, i: _ok(w, o, f"/api/v1/runs/{i}")),
    "pattern_id": Factory(
        _make_pattern, lambda w, o, i: _ok(w, o, f"/api/v1/admin/error-patterns/{i}")
    ),
    # DELETE /admin/run-access/{subject_kind}/{subject_id}: the kind is a word, not an id.
    "subject_kind": Factory(lambda w, o: "user", lambda w, o, i: True),
    "subject_id": Factory(_make_run_access, _run_access_untouched),
    # POST /admin/maintenance/{name}/run: a task's name, platform-wide (not a tenant's).
    "name": Factory(lambda w, o: "stale-uploads", lambda w, o, i: True),
}
# What an unknown object's path takes where a parameter is not an id.
NOT_IDS: dict[str, str] = {"subject_kind": "user", "name": "no-such-task"}

# Bodies valid for the route's schema, so that validation (422) cannot hide the 404.
BODIES: dict[tuple[str, str], dict[str, object]] = {
    ("PATCH", "/api/v1/admin/users/{user_id}"): {"role": "editor"},
    ("POST", "/api/v1/chats/{chat_id}/messages"): {"content": "what is in the plans?"},
    ("PATCH", "/api/v1/chats/{chat_id}"): {"title": "renamed"},
    ("PATCH", "/api/v1/admin/tenants/{tenant_id}"): {"is_active": False},
    ("PUT", "/api/v1/admin/tenants/{tenant_id}/budget"): {"token_budget": 1000},
    ("PUT", "/api/v1/admin/tenants/{tenant_id}/limits"): {},
    ("PATCH", "/api/v1/admin/error-patterns/{pattern_id}"): {"title": "changed"},
}
# Routes only a platform admin may call: another tenant's admin is refused by role (403)
# before any id is looked at, which says nothing about the object either.
PLATFORM_ONLY = {
    "/api/v1/admin/tenants/{tenant_id}",
    "/api/v1/admin/tenants/{tenant_id}/budget",
    "/api/v1/admin/tenants/{tenant_id}/limits",
    "/api/v1/admin/maintenance/{name}/run",
    "/api/v1/admin/maintenance/runs/{job_id}/cancel",
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
    api_client: TestClient,
    session_factory: sessionmaker[Session],
    platform_admin: Account,
    tenant_a: Account,
    tenant_b: Account,
) -> None:
    world = World(api_client, session_factory)
    routes = _id_routes(api_client)
    assert routes, "the app has routes with object ids"
    missing = sorted({p for _, _, params in routes for p in params if p not in FACTORIES})
    assert not missing, f"add a factory to FACTORIES for path parameters: {missing}"

    for method, template, params in routes:
        ids = {name: FACTORIES[name].create(world, tenant_a) for name in params}
        path = template.format(**ids)
        body = BODIES.get((method, template))
        response = api_client.request(method, path, headers=tenant_b.headers, json=body)
        expected = 403 if template in PLATFORM_ONLY else 404
        assert response.status_code == expected, (
            f"{method} {template} as another tenant answered "
            f"{response.status_code}: {response.text}"
        )
        assert tenant_a.tenant_slug not in response.text
        for name, object_id in ids.items():
            assert FACTORIES[name].exists(world, tenant_a, object_id), (
                f"{method} {template} by another tenant changed {name} {object_id}"
            )

        # Unknown ids are 404 as well, never 500.
        unknown = template.format(**{n: NOT_IDS.get(n, uuid.uuid4()) for n in params})
        caller = platform_admin if template in PLATFORM_ONLY else tenant_a
        response = api_client.request(method, unknown, headers=caller.headers, json=body)
        assert response.status_code == 404, f"{method} {unknown}: {response.text}"


def test_lists_show_only_own_tenant(
    api_client: TestClient,
    session_factory: sessionmaker[Session],
    tenant_a: Account,
    tenant_b: Account,
) -> None:
    world = World(api_client, session_factory)
    _make_user(world, tenant_a)
    _make_api_key(world, tenant_a)
    _make_document(world, tenant_a)
    users_b = api_client.get("/api/v1/admin/users", headers=tenant_b.headers).json()
    keys_b = api_client.get("/api/v1/admin/api-keys", headers=tenant_b.headers).json()
    audit_b = api_client.get("/api/v1/admin/audit", headers=tenant_b.headers).json()
    assert {u["tenant_id"] for u in users_b} == {str(tenant_b.tenant_id)}
    assert keys_b == []
    docs_b = api_client.get("/api/v1/documents", headers=tenant_b.headers).json()
    jobs_b = api_client.get("/api/v1/jobs", headers=tenant_b.headers).json()
    assert docs_b["total"] == 0
    assert jobs_b == []
    assert all(entry["tenant_id"] == str(tenant_b.tenant_id) for entry in audit_b)
