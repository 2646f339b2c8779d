"""A token is only as good as its user's current state: disabling, deleting or demoting a
user, changing a password, revoking an API key or disabling a tenant refuses the caller's
very next request (the bound Haven guarantees: the first request after the change's response,
with Redis up, down, or emptied), and no token signed by a key outside this installation's set
(the published development key included) is accepted."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.main import create_app
from api.settings import ApiSettings
from haven.auth.principal import Principal
from haven.auth.tokens import TokenService
from haven.db.tables import Role
from haven.settings import DEV_JWT_KEYS, AuthSettings
from tests.fixtures.api import PASSWORD, Account, create_user, login

ME = "/api/v1/me"
INSTALLATION_KEYS = json.dumps({"site-1": "s" * 48})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def refused(client: TestClient, headers: dict[str, str], code: str) -> None:
    response = client.get(ME, headers=headers)
    assert response.status_code == 401, response.text
    assert response.json()["code"] == code


def test_disabled_user_is_refused_at_the_next_request(
    api_client: TestClient, tenant_a: Account
) -> None:
    viewer = create_user(api_client, tenant_a, Role.VIEWER)
    assert api_client.get(ME, headers=viewer.headers).status_code == 200  # its state is cached
    response = api_client.patch(
        f"/api/v1/admin/users/{viewer.user_id}", json={"is_active": False}, headers=tenant_a.headers
    )
    assert response.status_code == 200
    refused(api_client, viewer.headers, "account.disabled")


def test_demoted_user_is_refused_at_the_next_request(
    api_client: TestClient, tenant_a: Account
) -> None:
    editor = create_user(api_client, tenant_a, Role.EDITOR)
    assert api_client.get(ME, headers=editor.headers).json()["role"] == "editor"
    response = api_client.patch(
        f"/api/v1/admin/users/{editor.user_id}", json={"role": "viewer"}, headers=tenant_a.headers
    )
    assert response.status_code == 200
    refused(api_client, editor.headers, "session.ended")
    # Signing in again gives a token with the new role.
    assert api_client.get(ME, headers=bearer(login(api_client, editor.username))).json()[
        "role"
    ] == ("viewer")


def test_deleted_user_is_refused_at_the_next_request(
    api_client: TestClient, tenant_a: Account
) -> None:
    viewer = create_user(api_client, tenant_a, Role.VIEWER)
    assert api_client.get(ME, headers=viewer.headers).status_code == 200
    response = api_client.delete(f"/api/v1/admin/users/{viewer.user_id}", headers=tenant_a.headers)
    assert response.status_code == 204
    refused(api_client, viewer.headers, "account.disabled")


def test_revoked_api_key_token_is_refused_at_the_next_request(
    api_client: TestClient, tenant_a: Account
) -> None:
    created = api_client.post(
        "/api/v1/admin/api-keys", json={"name": "app", "role": "editor"}, headers=tenant_a.headers
    ).json()
    exchanged = api_client.post("/api/v1/auth/api-key", json={"api_key": created["api_key"]})
    token = exchanged.json()["access_token"]
    assert api_client.get(ME, headers=bearer(token)).status_code == 200
    revoked = api_client.delete(f"/api/v1/admin/api-keys/{created['id']}", headers=tenant_a.headers)
    assert revoked.status_code == 200
    refused(api_client, bearer(token), "api_key.revoked")
    # The key itself, sent as the bearer (OpenAI clients do), is refused too.
    response = api_client.get(ME, headers=bearer(created["api_key"]))
    assert response.status_code == 401
    assert response.json()["code"] == "api_key.revoked"


def test_losing_redis_copies_never_lets_a_refused_token_back(
    api_client: TestClient, tenant_a: Account, redis_client: redis.Redis
) -> None:
    viewer = create_user(api_client, tenant_a, Role.VIEWER)
    assert api_client.get(ME, headers=viewer.headers).status_code == 200
    api_client.patch(
        f"/api/v1/admin/users/{viewer.user_id}", json={"is_active": False}, headers=tenant_a.headers
    )
    redis_client.flushdb()  # Redis restarted empty: PostgreSQL is the truth
    refused(api_client, viewer.headers, "account.disabled")
    assert api_client.get(ME, headers=tenant_a.headers).status_code == 200


def test_with_redis_unreachable_the_state_comes_from_postgresql(
    api_settings: ApiSettings,
) -> None:
    settings = api_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        from tests.fixtures.api import bootstrap_platform_admin, create_tenant_with_admin

        factory = client.app.state.runtime.session_factory  # type: ignore[attr-defined]
        root = bootstrap_platform_admin(factory, client)
        admin = create_tenant_with_admin(client, root)
        viewer = create_user(client, admin, Role.VIEWER)
        assert client.get(ME, headers=viewer.headers).status_code == 200
        response = client.patch(
            f"/api/v1/admin/users/{viewer.user_id}",
            json={"is_active": False},
            headers=admin.headers,
        )
        assert response.status_code == 200
        refused(client, viewer.headers, "account.disabled")


def test_password_change_by_an_admin_ends_the_users_sessions(
    api_client: TestClient, tenant_a: Account
) -> None:
    viewer = create_user(api_client, tenant_a, Role.VIEWER)
    response = api_client.patch(
        f"/api/v1/admin/users/{viewer.user_id}",
        json={"password": "a-new-password-1"},
        headers=tenant_a.headers,
    )
    assert response.status_code == 200
    refused(api_client, viewer.headers, "session.ended")
    assert login(api_client, viewer.username, "a-new-password-1")


def test_self_service_password_change(api_client: TestClient, tenant_a: Account) -> None:
    editor = create_user(api_client, tenant_a, Role.EDITOR)
    other_session = login(api_client, editor.username)
    url = "/api/v1/auth/password"

    wrong = api_client.post(
        url,
        json={"current_password": "not-my-password", "new_password": "brand-new-secret"},
        headers=editor.headers,
    )
    assert wrong.status_code == 403
    assert wrong.json()["code"] == "password.wrong"
    assert api_client.get(ME, headers=bearer(other_session)).status_code == 200

    changed = api_client.post(
        url,
        json={"current_password": PASSWORD, "new_password": "brand-new-secret"},
        headers=editor.headers,
    )
    assert changed.status_code == 200, changed.text
    fresh = changed.json()["access_token"]
    # This session continues with the fresh token; every other one has ended.
    assert api_client.get(ME, headers=bearer(fresh)).status_code == 200
    refused(api_client, bearer(other_session), "session.ended")
    refused(api_client, editor.headers, "session.ended")
    # The old password no longer signs in; the new one does.
    old = api_client.post(
        "/api/v1/auth/token", data={"username": editor.username, "password": PASSWORD}
    )
    assert old.status_code == 401
    assert login(api_client, editor.username, "brand-new-secret")

    audit = api_client.get("/api/v1/admin/audit", headers=tenant_a.headers).json()
    assert any(
        e["action"] == "user.password_change" and e["target_id"] == str(editor.user_id)
        for e in audit
    )


def test_an_api_key_has_no_password_to_change(api_client: TestClient, tenant_a: Account) -> None:
    key = api_client.post(
        "/api/v1/admin/api-keys", json={"name": "app"}, headers=tenant_a.headers
    ).json()["api_key"]
    response = api_client.post(
        "/api/v1/auth/password",
        json={"current_password": "x", "new_password": "brand-new-secret"},
        headers=bearer(key),
    )
    assert response.status_code == 403


# -- signing keys ------------------------------------------------------------------------------


def _settings_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name in ("HAVEN_ENV", "HAVEN_JWT_KEYS", "HAVEN_JWT_ACTIVE_KID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("env", ["development", "production"])
def test_no_installation_runs_without_its_own_key(
    monkeypatch: pytest.MonkeyPatch, env: str
) -> None:
    _settings_env(monkeypatch, HAVEN_ENV=env)
    with pytest.raises(ValidationError, match="HAVEN_JWT_KEYS is not set"):
        AuthSettings()
    _settings_env(monkeypatch, HAVEN_ENV=env, HAVEN_JWT_KEYS=DEV_JWT_KEYS)
    with pytest.raises(ValidationError, match="published development key"):
        AuthSettings()
    # Hidden beside a real key, the published one is still refused.
    both = json.dumps({**json.loads(DEV_JWT_KEYS), "site-1": "s" * 48})
    _settings_env(monkeypatch, HAVEN_ENV=env, HAVEN_JWT_KEYS=both, HAVEN_JWT_ACTIVE_KID="site-1")
    with pytest.raises(ValidationError, match="published development key"):
        AuthSettings()


def test_a_generated_key_is_accepted_as_the_only_and_active_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What `haven up` passes: HAVEN_JWT_KEYS with one key and no active kid."""
    _settings_env(monkeypatch, HAVEN_ENV="development", HAVEN_JWT_KEYS=INSTALLATION_KEYS)
    settings = AuthSettings()
    assert settings.jwt_active_kid == "site-1"


@pytest.fixture()
def installation(store_overrides: dict[str, Any]) -> Iterator[TestClient]:
    """An API with this installation's own key, as `haven up` or a deployment runs it."""
    settings = ApiSettings(
        **{**store_overrides, "env": "development", "jwt_keys": INSTALLATION_KEYS}
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def _forge(keys: str, kid: str, who: Principal) -> str:
    token, _ = TokenService(AuthSettings(env="test", jwt_keys=keys, jwt_active_kid=kid)).issue(
        who, timedelta(minutes=5)
    )
    return token


def test_tokens_signed_outside_the_installations_key_set_are_refused(
    installation: TestClient,
) -> None:
    from tests.fixtures.api import bootstrap_platform_admin

    factory = installation.app.state.runtime.session_factory  # type: ignore[attr-defined]
    root = bootstrap_platform_admin(factory, installation)
    assert installation.get(ME, headers=root.headers).status_code == 200
    who = Principal(subject_id=root.user_id, tenant_id=root.tenant_id, role=Role.ADMIN)

    dev_signed = _forge(DEV_JWT_KEYS, "dev-1", who)
    response = installation.get(ME, headers=bearer(dev_signed))
    assert response.status_code == 401
    assert "unknown signing key" in response.json()["detail"]

    # An attacker's key that reuses this installation's kid does not verify either.
    same_kid = _forge(json.dumps({"site-1": "a" * 48}), "site-1", who)
    response = installation.get(ME, headers=bearer(same_kid))
    assert response.status_code == 401
    assert "invalid token" in response.json()["detail"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _sign(header: dict[str, Any], claims: dict[str, Any], secret: str) -> str:
    """A JWT built by hand, so the header can hold what no JWT library would write."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


@pytest.mark.parametrize("kid", [["site-1"], {"k": "site-1"}, 7])
def test_a_kid_that_is_not_a_string_is_a_401(installation: TestClient, kid: object) -> None:
    claims = {
        "iss": "haven",
        "sub": str(uuid.uuid4()),
        "tenant": str(uuid.uuid4()),
        "roles": ["admin"],
        "iat": 0,
        "exp": 9999999999,
        "jti": "x",
        "ver": 0,
    }
    token = _sign({"alg": "HS256", "typ": "JWT", "kid": kid}, claims, "s" * 48)
    response = installation.get(ME, headers=bearer(token))
    assert response.status_code == 401, response.text


def test_api_key_expiry_without_a_time_zone_is_a_422(
    api_client: TestClient, tenant_a: Account
) -> None:
    naive = (datetime.now() + timedelta(days=1)).replace(microsecond=0).isoformat()
    response = api_client.post(
        "/api/v1/admin/api-keys",
        json={"name": "app", "expires_at": naive},
        headers=tenant_a.headers,
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "body.expires_at"
    with_zone = api_client.post(
        "/api/v1/admin/api-keys",
        json={"name": "app", "expires_at": naive + "+00:00"},
        headers=tenant_a.headers,
    )
    assert with_zone.status_code == 201
