"""The audit log records who did what to whom, for every admin action."""

from __future__ import annotations

from fastapi.testclient import TestClient

from haven.db.tables import Role
from tests.fixtures.api import Account, create_user


def test_admin_actions_are_audited(
    api_client: TestClient, platform_admin: Account, tenant_a: Account
) -> None:
    viewer = create_user(api_client, tenant_a, Role.VIEWER)
    api_client.patch(
        f"/api/v1/admin/users/{viewer.user_id}", json={"role": "editor"}, headers=tenant_a.headers
    )
    key = api_client.post(
        "/api/v1/admin/api-keys", json={"name": "ingest-bot"}, headers=tenant_a.headers
    ).json()
    api_client.delete(f"/api/v1/admin/api-keys/{key['id']}", headers=tenant_a.headers)
    api_client.delete(f"/api/v1/admin/users/{viewer.user_id}", headers=tenant_a.headers)

    response = api_client.get(
        "/api/v1/admin/audit", headers={**tenant_a.headers, "X-Request-ID": "audit-check-1"}
    )
    assert response.status_code == 200
    entries = list(reversed(response.json()))
    actions = [(e["action"], e["target_id"]) for e in entries]
    assert actions == [
        ("tenant.create", str(tenant_a.tenant_id)),
        ("user.create", str(tenant_a.user_id)),
        ("user.create", str(viewer.user_id)),
        ("user.update", str(viewer.user_id)),
        ("api_key.create", key["id"]),
        ("api_key.revoke", key["id"]),
        ("user.delete", str(viewer.user_id)),
    ]
    by_platform = entries[:2]
    assert all(e["actor_id"] == str(platform_admin.user_id) for e in by_platform)
    by_tenant_admin = entries[2:]
    assert all(e["actor_id"] == str(tenant_a.user_id) for e in by_tenant_admin)
    assert all(e["request_id"] for e in entries)
    update = entries[3]
    assert update["details"]["changes"]["role"] == {"from": "viewer", "to": "editor"}
    assert entries[2]["details"]["username"] == viewer.username
