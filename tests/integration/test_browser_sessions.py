"""Browser sessions (``/api/v1/auth/session``, ``/refresh``, ``/logout``): the web app keeps
only an httpOnly cookie, a reload stays signed in, and the session ends when the user signs
out, is disabled, deleted or demoted, or changes their password; forged or stale cookies and
cross-site requests without the CSRF header are refused."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from api.main import create_app
from api.settings import ApiSettings
from haven.db.engine import transaction
from haven.db.tables import BrowserSession, Role
from tests.fixtures.api import PASSWORD, Account, create_user

CSRF = {"X-Haven-CSRF": "1"}
ME = "/api/v1/me"


def sign_in(client: TestClient, who: Account, password: str = PASSWORD) -> Any:
    return client.post(
        "/api/v1/auth/session",
        data={"username": who.username, "password": password},
        headers=CSRF,
    )


def cookie_of(client: TestClient) -> str:
    value = client.cookies.get("haven_session", path="/api/v1/auth")
    assert value, "the session cookie is set"
    return value


def refresh(client: TestClient, cookie: str | None = None, **headers: str) -> Any:
    """As the browser would: the client's cookie jar, or the given cookie value only."""
    if cookie is None:
        return client.post("/api/v1/auth/refresh", headers={**CSRF, **headers})
    with browser(client) as other:
        other.cookies.set("haven_session", cookie, path="/api/v1/auth")
        return other.post("/api/v1/auth/refresh", headers={**CSRF, **headers})


@contextmanager
def browser(client: TestClient) -> Iterator[TestClient]:
    """Another browser on the same running API: a cookie jar of its own for a while."""
    kept = client.cookies
    client.cookies = {}
    try:
        yield client
    finally:
        client.cookies = kept


def whoami(client: TestClient, token: str) -> dict[str, Any]:
    response = client.get(ME, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def refused(response: Any, code: str) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["code"] == code, response.text


@pytest.fixture()
def user(api_client: TestClient, tenant_a: Account) -> Account:
    return create_user(api_client, tenant_a, Role.EDITOR)


def test_sign_in_sets_an_httponly_strict_cookie_and_a_reload_stays_signed_in(
    api_client: TestClient, session_factory: sessionmaker[Session], user: Account
) -> None:
    response = sign_in(api_client, user)
    assert response.status_code == 200, response.text
    assert whoami(api_client, response.json()["access_token"])["username"] == user.username

    set_cookie = response.headers["set-cookie"]
    flags = [part.strip().lower() for part in set_cookie.split(";")]
    assert flags[0].startswith("haven_session=")
    assert "httponly" in flags and "samesite=strict" in flags and "path=/api/v1/auth" in flags
    assert "secure" not in flags  # the test API runs without HTTPS, like `haven up`
    assert f"max-age={7 * 24 * 3600}" in flags
    cookie = cookie_of(api_client)
    assert len(cookie) >= 40

    # A reload: the page has no token, only the cookie; the refresh gives a new token.
    again = refresh(api_client)
    assert again.status_code == 200, again.text
    me = whoami(api_client, again.json()["access_token"])
    assert me["subject_id"] == str(user.user_id) and me["role"] == "editor"

    # Only the secret's hash is stored.
    with transaction(session_factory) as session:
        row = session.execute(
            select(BrowserSession).where(BrowserSession.user_id == user.user_id)
        ).scalar_one()
        assert row.secret_hash == hashlib.sha256(cookie.encode()).hexdigest()
        assert cookie not in (row.secret_hash, str(row.id))
        assert row.revoked_at is None


def test_a_session_survives_an_api_restart_and_a_redis_flush(
    api_settings: ApiSettings, api_client: TestClient, user: Account, redis_client: Any
) -> None:
    assert sign_in(api_client, user).status_code == 200
    cookie = cookie_of(api_client)
    redis_client.flushdb()
    with TestClient(create_app(api_settings), raise_server_exceptions=False) as restarted:
        restarted.cookies.set("haven_session", cookie, path="/api/v1/auth")
        response = restarted.post("/api/v1/auth/refresh", headers=CSRF)
        assert response.status_code == 200, response.text
        assert whoami(restarted, response.json()["access_token"])["username"] == user.username


def test_logout_revokes_the_session_clears_the_cookie_and_is_idempotent(
    api_client: TestClient, tenant_a: Account, user: Account
) -> None:
    assert sign_in(api_client, user).status_code == 200
    cookie = cookie_of(api_client)
    response = api_client.post("/api/v1/auth/logout", headers=CSRF)
    assert response.status_code == 204, response.text
    cleared = [part.strip().lower() for part in response.headers["set-cookie"].split(";")]
    assert 'haven_session=""' in cleared or "haven_session=" in cleared
    assert "max-age=0" in cleared and "path=/api/v1/auth" in cleared
    assert api_client.cookies.get("haven_session") is None

    # The old cookie, kept by whoever copied it, no longer works.
    refused(refresh(api_client, cookie), "session.ended")
    refused(refresh(api_client), "session.missing")
    # Signing out again, or without any session: still fine.
    assert api_client.post("/api/v1/auth/logout", headers=CSRF).status_code == 204
    with browser(api_client) as other:
        other.cookies.set("haven_session", cookie, path="/api/v1/auth")
        assert other.post("/api/v1/auth/logout", headers=CSRF).status_code == 204

    # Sign-in and sign-out are in the tenant's audit log.
    audit = api_client.get("/api/v1/admin/audit", headers=tenant_a.headers).json()
    actions = [(e["action"], e["details"].get("username")) for e in audit]
    assert ("session.sign_in", user.username) in actions
    assert actions.count(("session.sign_out", user.username)) == 1


def test_disabled_deleted_or_demoted_users_and_password_changes_end_the_session(
    api_client: TestClient, tenant_a: Account
) -> None:
    cookies: dict[str, str] = {}
    users: dict[str, Account] = {}
    for name in ("disabled", "deleted", "demoted", "password"):
        users[name] = create_user(api_client, tenant_a, Role.EDITOR)
        assert sign_in(api_client, users[name]).status_code == 200
        cookies[name] = cookie_of(api_client)
        assert refresh(api_client, cookies[name]).status_code == 200

    admin = tenant_a.headers
    path = "/api/v1/admin/users/{}"
    assert (
        api_client.patch(
            path.format(users["disabled"].user_id), json={"is_active": False}, headers=admin
        ).status_code
        == 200
    )
    assert (
        api_client.delete(path.format(users["deleted"].user_id), headers=admin).status_code == 204
    )
    assert (
        api_client.patch(
            path.format(users["demoted"].user_id), json={"role": "viewer"}, headers=admin
        ).status_code
        == 200
    )
    with browser(api_client) as elsewhere:  # changed from a client without the session
        changed = elsewhere.post(
            "/api/v1/auth/password",
            json={"current_password": PASSWORD, "new_password": "another-long-password"},
            headers=users["password"].headers,
        )
    assert changed.status_code == 200, changed.text

    refused(refresh(api_client, cookies["disabled"]), "account.disabled")
    refused(refresh(api_client, cookies["deleted"]), "session.unknown")
    refused(refresh(api_client, cookies["demoted"]), "session.ended")
    refused(refresh(api_client, cookies["password"]), "session.ended")
    # A new sign-in works again, with the new password and the new role.
    demoted = sign_in(api_client, users["demoted"])
    assert whoami(api_client, demoted.json()["access_token"])["role"] == "viewer"
    renewed = sign_in(api_client, users["password"], "another-long-password")
    assert renewed.status_code == 200, renewed.text


def test_a_password_change_keeps_the_browser_it_was_made_from_and_ends_the_others(
    api_client: TestClient, user: Account
) -> None:
    with browser(api_client) as laptop:
        assert sign_in(laptop, user).status_code == 200
        other_cookie = cookie_of(laptop)
    response = sign_in(api_client, user)
    token = response.json()["access_token"]
    changed = api_client.post(
        "/api/v1/auth/password",
        json={"current_password": PASSWORD, "new_password": "another-long-password"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert changed.status_code == 200, changed.text
    # This browser reloads and stays signed in; the one elsewhere must sign in again.
    again = refresh(api_client)
    assert again.status_code == 200, again.text
    assert whoami(api_client, again.json()["access_token"])["username"] == user.username
    refused(refresh(api_client, other_cookie), "session.ended")


def test_ended_sessions_are_cleared_at_the_next_sign_in(
    api_client: TestClient, session_factory: sessionmaker[Session], user: Account
) -> None:
    for _ in range(3):
        assert sign_in(api_client, user).status_code == 200
        assert api_client.post("/api/v1/auth/logout", headers=CSRF).status_code == 204
    assert sign_in(api_client, user).status_code == 200
    with transaction(session_factory) as session:
        rows = (
            session.execute(select(BrowserSession).where(BrowserSession.user_id == user.user_id))
            .scalars()
            .all()
        )
        # The live one only: the three signed-out sessions were deleted.
        assert [r.revoked_at for r in rows] == [None]
    assert refresh(api_client).status_code == 200


def test_idle_and_old_sessions_expire(
    api_client: TestClient, session_factory: sessionmaker[Session], user: Account
) -> None:
    cookies = []
    for _ in range(2):
        assert sign_in(api_client, user).status_code == 200
        cookies.append(cookie_of(api_client))
    idle, old = (hashlib.sha256(c.encode()).hexdigest() for c in cookies)
    now = datetime.now(UTC)
    with transaction(session_factory) as session:
        # Unused for just over the 12 hours allowed; past its 7 days (though used just now).
        session.execute(
            update(BrowserSession)
            .where(BrowserSession.secret_hash == idle)
            .values(last_used_at=now - timedelta(hours=12, minutes=1))
        )
        session.execute(
            update(BrowserSession)
            .where(BrowserSession.secret_hash == old)
            .values(expires_at=now - timedelta(seconds=1))
        )
    refused(refresh(api_client, cookies[0]), "session.expired")
    refused(refresh(api_client, cookies[1]), "session.expired")


def test_forged_and_malformed_cookies_are_refused(
    api_client: TestClient, session_factory: sessionmaker[Session], tenant_a: Account, user: Account
) -> None:
    assert sign_in(api_client, user).status_code == 200
    with transaction(session_factory) as session:
        row = session.execute(
            select(BrowserSession).where(BrowserSession.user_id == user.user_id)
        ).scalar_one()
        stored_hash, session_id = row.secret_hash, str(row.id)
    for forged in (
        secrets.token_urlsafe(32),  # a guess with the right shape
        stored_hash,  # what a database reader sees
        session_id,
        cookie_of(api_client)[:-1],
        "x" * 4000,
        "%00",
    ):
        refused(refresh(api_client, forged), "session.unknown")
    # Another user's session never yields this user's token (and vice versa).
    other = create_user(api_client, tenant_a, Role.VIEWER)
    with browser(api_client) as theirs:
        assert sign_in(theirs, other).status_code == 200
        token = theirs.post("/api/v1/auth/refresh", headers=CSRF).json()["access_token"]
        assert whoami(theirs, token)["subject_id"] == str(other.user_id)
    # ... and this browser is still this user's.
    token = api_client.post("/api/v1/auth/refresh", headers=CSRF).json()["access_token"]
    assert whoami(api_client, token)["subject_id"] == str(user.user_id)
    refused(
        api_client.post("/api/v1/auth/refresh", headers={**CSRF, "Cookie": "haven_session="}),
        "session.missing",
    )


def test_cookie_routes_without_the_csrf_header_are_forbidden(
    api_client: TestClient, user: Account
) -> None:
    form = {"username": user.username, "password": PASSWORD}
    for headers in ({}, {"X-Haven-CSRF": "0"}, {"X-Haven-CSRF": ""}):
        response = api_client.post("/api/v1/auth/session", data=form, headers=headers)
        assert response.status_code == 403, response.text
        assert response.json()["code"] == "csrf.header_missing"
        assert "set-cookie" not in response.headers
    assert sign_in(api_client, user).status_code == 200
    for route in ("refresh", "logout"):
        response = api_client.post(f"/api/v1/auth/{route}")
        assert response.status_code == 403, response.text
        assert response.json()["code"] == "csrf.header_missing"
    # The logout without the header ended nothing.
    assert refresh(api_client).status_code == 200


def test_session_sign_in_refuses_like_the_token_route(
    store_overrides: dict[str, Any], tenant_a: Account
) -> None:
    settings = ApiSettings(**store_overrides, signin_failures_per_username=2)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        viewer = create_user(client, tenant_a, Role.VIEWER)
        for _ in range(2):
            refused(sign_in(client, viewer, "wrong-password"), "signin.failed")
        throttled = sign_in(client, viewer)
        assert throttled.status_code == 429, throttled.text
        assert int(throttled.headers["retry-after"]) >= 1
        assert "set-cookie" not in throttled.headers

        disabled = create_user(client, tenant_a, Role.VIEWER)
        client.patch(
            f"/api/v1/admin/users/{disabled.user_id}",
            json={"is_active": False},
            headers=tenant_a.headers,
        )
        response = sign_in(client, disabled)
        refused(response, "account.disabled")
        assert "set-cookie" not in response.headers
        for form in ({}, {"username": "", "password": ""}, {"username": "a\x00b", "password": "x"}):
            response = client.post("/api/v1/auth/session", data=form, headers=CSRF)
            assert response.status_code in (401, 422), response.text


def test_secure_cookie_when_the_site_is_https(
    store_overrides: dict[str, Any], tenant_a: Account
) -> None:
    assert ApiSettings.model_construct(env="production").session_cookie_is_secure
    assert not ApiSettings.model_construct(env="development").session_cookie_is_secure
    assert not ApiSettings.model_construct(
        env="production", session_cookie_secure=False
    ).session_cookie_is_secure
    settings = ApiSettings(**store_overrides, session_cookie_secure=True)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        user = create_user(client, tenant_a, Role.VIEWER)
        response = sign_in(client, user)
        assert response.status_code == 200, response.text
        flags = [part.strip().lower() for part in response.headers["set-cookie"].split(";")]
        assert "secure" in flags and "httponly" in flags


def test_in_read_only_mode_a_browser_stays_signed_in_and_can_sign_out(
    api_client: TestClient, platform_admin: Account, user: Account
) -> None:
    """An operator's maintenance window must not sign everyone out at their next reload."""
    assert sign_in(api_client, user).status_code == 200

    def switch(on: bool) -> None:
        response = api_client.put(
            "/api/v1/admin/read-only",
            json={"on": on, "reason": "backup drill"},
            headers=platform_admin.headers,
        )
        assert response.status_code == 200, response.text

    switch(True)
    try:
        again = refresh(api_client)
        assert again.status_code == 200, again.text
        assert whoami(api_client, again.json()["access_token"])["username"] == user.username
        # A new browser session is a write that waits (the plain token route still works).
        with browser(api_client) as other:
            refused_now = sign_in(other, user)
            assert refused_now.status_code == 503 and refused_now.json()["code"] == "read_only"
        assert api_client.post("/api/v1/auth/logout", headers=CSRF).status_code == 204
        refused(refresh(api_client), "session.missing")
    finally:
        switch(False)
