"""Sign-in with passwords and API keys, and the answers to every kind of bad credential."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient

from haven.auth.principal import Principal
from haven.auth.tokens import TokenService
from haven.db.tables import Role
from haven.settings import AuthSettings
from tests.fixtures.api import PASSWORD, Account, create_user, login


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_login_and_me(api_client: TestClient, tenant_a: Account) -> None:
    me = api_client.get("/api/v1/me", headers=tenant_a.headers)
    assert me.status_code == 200
    assert me.json()["tenant_slug"] == tenant_a.tenant_slug
    assert me.json()["role"] == "tenant_admin"
    assert me.json()["username"] == tenant_a.username


def test_wrong_password_and_unknown_user(api_client: TestClient, tenant_a: Account) -> None:
    for username, password in [(tenant_a.username, "wrong-password"), ("nobody", PASSWORD)]:
        response = api_client.post(
            "/api/v1/auth/token", data={"username": username, "password": password}
        )
        assert response.status_code == 401
        assert response.json()["detail"] == "incorrect username or password"


def test_disabled_user_cannot_sign_in(api_client: TestClient, tenant_a: Account) -> None:
    viewer = create_user(api_client, tenant_a, Role.VIEWER)
    response = api_client.patch(
        f"/api/v1/admin/users/{viewer.user_id}", json={"is_active": False}, headers=tenant_a.headers
    )
    assert response.status_code == 200
    response = api_client.post(
        "/api/v1/auth/token", data={"username": viewer.username, "password": PASSWORD}
    )
    assert response.status_code == 401
    assert "disabled" in response.json()["detail"]


def test_bad_tokens_get_401_with_a_reason(api_client: TestClient, tenant_a: Account) -> None:
    cases = {
        "missing bearer token": {},
        "malformed token": bearer("not-a-jwt"),
        "not accepted": bearer("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4In0."),
    }
    for reason, headers in cases.items():
        response = api_client.get("/api/v1/me", headers=headers)
        assert response.status_code == 401, reason
        assert reason in response.json()["detail"]
        assert "Traceback" not in response.text


def test_expired_and_foreign_key_tokens(api_client: TestClient, tenant_a: Account) -> None:
    settings: AuthSettings = api_client.app.state.runtime.settings  # type: ignore[attr-defined]
    who = Principal(subject_id=tenant_a.user_id, tenant_id=tenant_a.tenant_id, role=Role.ADMIN)
    expired, _ = TokenService(settings).issue(who, timedelta(seconds=-10))
    response = api_client.get("/api/v1/me", headers=bearer(expired))
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]

    other = AuthSettings(jwt_keys='{"attacker": "' + "a" * 40 + '"}', jwt_active_kid="attacker")
    forged, _ = TokenService(other).issue(who, timedelta(minutes=5))
    response = api_client.get("/api/v1/me", headers=bearer(forged))
    assert response.status_code == 401
    assert "unknown signing key" in response.json()["detail"]


def test_roles_are_enforced_with_403(api_client: TestClient, tenant_a: Account) -> None:
    editor = create_user(api_client, tenant_a, Role.EDITOR)
    assert api_client.get("/api/v1/admin/users", headers=editor.headers).status_code == 403
    # A tenant admin cannot create tenants or grant the platform role.
    response = api_client.post(
        "/api/v1/admin/tenants", json={"slug": "nope", "name": "x"}, headers=tenant_a.headers
    )
    assert response.status_code == 403
    response = api_client.post(
        "/api/v1/admin/users",
        json={"username": "escalate@x", "password": PASSWORD, "role": "admin"},
        headers=tenant_a.headers,
    )
    assert response.status_code == 403


def test_invalid_bodies_name_the_field(api_client: TestClient, tenant_a: Account) -> None:
    response = api_client.post(
        "/api/v1/admin/users",
        json={"username": "ok-name", "password": "short", "role": "boss"},
        headers=tenant_a.headers,
    )
    assert response.status_code == 422
    fields = {e["field"] for e in response.json()["errors"]}
    assert fields == {"body.password", "body.role"}


def test_api_key_exchange_and_revocation(api_client: TestClient, tenant_a: Account) -> None:
    created = api_client.post(
        "/api/v1/admin/api-keys",
        json={"name": "uploader", "role": "editor"},
        headers=tenant_a.headers,
    )
    assert created.status_code == 201
    body = created.json()
    plaintext = body["api_key"]
    assert plaintext.startswith("hvn_")

    # Shown once: listing never returns the key itself.
    listed = api_client.get("/api/v1/admin/api-keys", headers=tenant_a.headers).json()
    assert plaintext not in str(listed)

    exchanged = api_client.post("/api/v1/auth/api-key", json={"api_key": plaintext})
    assert exchanged.status_code == 200
    me = api_client.get("/api/v1/me", headers=bearer(exchanged.json()["access_token"])).json()
    assert (me["kind"], me["role"], me["tenant_id"]) == (
        "api_key",
        "editor",
        str(tenant_a.tenant_id),
    )

    wrong = plaintext[:-4] + "AAAA"
    assert api_client.post("/api/v1/auth/api-key", json={"api_key": wrong}).status_code == 401

    revoked = api_client.delete(f"/api/v1/admin/api-keys/{body['id']}", headers=tenant_a.headers)
    assert revoked.status_code == 200
    again = api_client.post("/api/v1/auth/api-key", json={"api_key": plaintext})
    assert again.status_code == 401
    assert "revoked" in again.json()["detail"]


def test_duplicate_username_is_a_conflict(api_client: TestClient, tenant_a: Account) -> None:
    response = api_client.post(
        "/api/v1/admin/users",
        json={"username": tenant_a.username, "password": PASSWORD},
        headers=tenant_a.headers,
    )
    assert response.status_code == 409
    assert login(api_client, tenant_a.username)  # the existing account is untouched


def test_a_deleted_users_chats_are_deleted_with_them(
    api_client: TestClient, tenant_a: Account
) -> None:
    """A user's chats are private to them; deleting the user must not hand them to the
    tenant's applications (which share the chats no user owns)."""
    viewer = create_user(api_client, tenant_a, Role.VIEWER)
    chat = api_client.post(
        "/api/v1/chats", json={"title": "my private plans"}, headers=viewer.headers
    ).json()
    key = api_client.post(
        "/api/v1/admin/api-keys", json={"name": "app", "role": "viewer"}, headers=tenant_a.headers
    ).json()["api_key"]
    app_headers = bearer(key)
    assert api_client.get(f"/api/v1/chats/{chat['id']}", headers=app_headers).status_code == 404

    deleted = api_client.delete(f"/api/v1/admin/users/{viewer.user_id}", headers=tenant_a.headers)
    assert deleted.status_code == 204
    assert api_client.get(f"/api/v1/chats/{chat['id']}", headers=app_headers).status_code == 404
    listed = api_client.get("/api/v1/chats", headers=app_headers)
    assert listed.status_code == 200
    assert "my private plans" not in listed.text
