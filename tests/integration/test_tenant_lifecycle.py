"""Platform admins disable a tenant (every request of its users and keys refused at once) and
delete it, with its rows, objects, vectors and cached answers purged and counted; another
tenant's data is untouched. Real PostgreSQL, moto S3, embedded Qdrant and Redis."""

from __future__ import annotations

import uuid

import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from api.runtime import ApiRuntime
from haven import answer_cache
from haven.answer_cache import CachedAnswer
from haven.db.engine import transaction
from haven.db.tables import AuditEntry, Base, Role
from haven.index import IndexedChunk, SparseVector
from haven.storage import tenant_prefix
from tests.fixtures.api import PASSWORD, Account, create_user, login, upload

ME = "/api/v1/me"


def _runtime(client: TestClient) -> ApiRuntime:
    runtime: ApiRuntime = client.app.state.runtime  # type: ignore[attr-defined]
    return runtime


def _api_key(client: TestClient, admin: Account) -> str:
    response = client.post("/api/v1/admin/api-keys", json={"name": "app"}, headers=admin.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["api_key"])


def test_disabling_a_tenant_refuses_its_users_and_keys_at_once(
    api_client: TestClient, platform_admin: Account, tenant_a: Account, tenant_b: Account
) -> None:
    viewer = create_user(api_client, tenant_a, Role.VIEWER)
    key = _api_key(api_client, tenant_a)
    exchanged = api_client.post("/api/v1/auth/api-key", json={"api_key": key}).json()
    key_token = {"Authorization": f"Bearer {exchanged['access_token']}"}
    callers = [tenant_a.headers, viewer.headers, key_token, {"Authorization": f"Bearer {key}"}]
    assert all(api_client.get(ME, headers=h).status_code == 200 for h in callers)

    response = api_client.patch(
        f"/api/v1/admin/tenants/{tenant_a.tenant_id}",
        json={"is_active": False},
        headers=platform_admin.headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["is_active"] is False
    for headers in callers:
        answer = api_client.get(ME, headers=headers)
        assert answer.status_code == 401
        assert answer.json()["code"] == "tenant.disabled"
    signin = api_client.post(
        "/api/v1/auth/token", data={"username": viewer.username, "password": PASSWORD}
    )
    assert signin.status_code == 401
    assert api_client.get(ME, headers=tenant_b.headers).status_code == 200  # others go on

    api_client.patch(
        f"/api/v1/admin/tenants/{tenant_a.tenant_id}",
        json={"is_active": True},
        headers=platform_admin.headers,
    )
    assert api_client.get(ME, headers=viewer.headers).status_code == 200
    audit = api_client.get("/api/v1/admin/audit", headers=tenant_a.headers).json()
    changes = [e["details"]["changes"] for e in audit if e["action"] == "tenant.update"]
    assert changes == [{"is_active": True}, {"is_active": False}]


def test_a_platform_admin_cannot_disable_or_delete_their_own_tenant(
    api_client: TestClient, platform_admin: Account
) -> None:
    path = f"/api/v1/admin/tenants/{platform_admin.tenant_id}"
    response = api_client.patch(path, json={"is_active": False}, headers=platform_admin.headers)
    assert response.status_code == 409
    assert api_client.delete(path, headers=platform_admin.headers).status_code == 409
    assert api_client.get(ME, headers=platform_admin.headers).status_code == 200


def _seed_stores(client: TestClient, owner: Account, count: int) -> None:
    """Vectors and cached answers of the tenant, as ingest and the chat leave them."""
    runtime = _runtime(client)
    index = runtime.index
    index.ensure({"minilm": 4})
    index.upsert(
        IndexedChunk(
            id=uuid.uuid4(),
            dense={"minilm": [0.1, 0.2, 0.3, float(n)]},
            sparse=SparseVector([1], [1.0]),
            payload={"tenant_id": str(owner.tenant_id), "document_id": str(uuid.uuid4())},
        )
        for n in range(count)
    )

    # What AnswerCache.put writes: the answer, and its key listed under each cited document.
    for n in range(count):
        document_id = uuid.uuid4()
        answer = CachedAnswer("text", {}, "stop", document_ids=[str(document_id)])
        key = f"{answer_cache.PREFIX}:{owner.tenant_id}:{n}"
        runtime.redis.set(key, answer.dumps(), ex=3600)
        runtime.redis.sadd(f"{answer_cache.PREFIX}-docs:{owner.tenant_id}:{document_id}", key)


def _rows(factory: sessionmaker[Session], tenant_id: uuid.UUID) -> int:
    total = 0
    with transaction(factory) as session:
        for table in Base.metadata.sorted_tables:
            column = table.c.get("tenant_id")
            if column is not None and table.name != "audit_log":
                stmt = select(func.count()).select_from(table).where(column == tenant_id)
                total += int(session.execute(stmt).scalar_one())
    return total


def test_deleting_a_tenant_purges_every_store_and_reports_it(
    api_client: TestClient,
    session_factory: sessionmaker[Session],
    redis_client: redis.Redis,
    platform_admin: Account,
    tenant_a: Account,
    tenant_b: Account,
) -> None:
    runtime = _runtime(api_client)
    bucket = runtime.settings.s3_bucket
    doomed, kept = tenant_a, tenant_b
    for owner in (doomed, kept):
        viewer = create_user(api_client, owner, Role.VIEWER)
        _api_key(api_client, owner)
        for n in range(2):
            assert (
                upload(api_client, owner, f"{owner.tenant_slug} note {n}".encode()).status_code
                == 201
            )
        chat = api_client.post("/api/v1/chats", json={"title": "plans"}, headers=viewer.headers)
        assert chat.status_code == 201
        _seed_stores(api_client, owner, 3)

    def objects(owner: Account) -> int:
        found = runtime.s3.list_objects(
            bucket, prefix=tenant_prefix(owner.tenant_id), recursive=True
        )
        return len(list(found))

    def cached(owner: Account) -> int:
        return len(list(redis_client.scan_iter(match=f"haven:answer:{owner.tenant_id}:*")))

    before_rows = _rows(session_factory, doomed.tenant_id)
    assert objects(doomed) == 2 and runtime.index.count(doomed.tenant_id) == 3

    response = api_client.delete(
        f"/api/v1/admin/tenants/{doomed.tenant_id}", headers=platform_admin.headers
    )
    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["objects"], report["vectors"], report["cache_entries"]) == (2, 3, 3)
    assert report["rows"]["users"] == 2 and report["rows"]["documents"] == 2
    assert report["rows"]["chats"] == 1 and report["rows"]["api_keys"] == 1
    assert sum(report["rows"].values()) == before_rows

    # Gone from every store...
    assert _rows(session_factory, doomed.tenant_id) == 0
    assert objects(doomed) == 0
    assert runtime.index.count(doomed.tenant_id) == 0
    assert cached(doomed) == 0
    assert list(redis_client.scan_iter(match=f"haven:answer-docs:{doomed.tenant_id}:*")) == []
    assert api_client.get(ME, headers=doomed.headers).status_code == 401
    assert (
        api_client.post(
            "/api/v1/auth/token", data={"username": doomed.username, "password": PASSWORD}
        ).status_code
        == 401
    )
    # ... and nothing of the other tenant went with it.
    assert objects(kept) == 2 and runtime.index.count(kept.tenant_id) == 3 and cached(kept) == 3
    assert api_client.get("/api/v1/documents", headers=kept.headers).json()["total"] == 2
    assert login(api_client, kept.username)

    with transaction(session_factory) as session:
        entry = session.execute(
            select(AuditEntry).where(
                AuditEntry.action == "tenant.delete", AuditEntry.target_id == str(doomed.tenant_id)
            )
        ).scalar_one()
        assert entry.actor_id == platform_admin.user_id
        assert entry.details["objects"] == 2 and entry.details["rows"] == report["rows"]

    again = api_client.delete(
        f"/api/v1/admin/tenants/{doomed.tenant_id}", headers=platform_admin.headers
    )
    assert again.status_code == 404
