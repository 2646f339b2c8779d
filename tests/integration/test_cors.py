"""The web chat on its own origin may call the API, streaming included; other origins not."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings
from tests.fixtures.api import bootstrap_platform_admin

CHAT_ORIGIN = "https://chat.example.org"


def test_the_configured_origin_may_post_chat_messages_and_read_the_request_id(
    store_overrides: dict[str, Any],
) -> None:
    settings = ApiSettings(**store_overrides, cors_origins=[CHAT_ORIGIN])
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        factory = client.app.state.runtime.session_factory  # type: ignore[attr-defined]
        admin = bootstrap_platform_admin(factory, client)
        preflight = client.options(
            "/api/v1/chats/00000000-0000-0000-0000-000000000000/messages",
            headers={
                "Origin": CHAT_ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == CHAT_ORIGIN
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()

        chats = client.get("/api/v1/chats", headers={**admin.headers, "Origin": CHAT_ORIGIN})
        assert chats.status_code == 200
        assert chats.headers["access-control-allow-origin"] == CHAT_ORIGIN
        assert "x-request-id" in chats.headers["access-control-expose-headers"].lower()

        elsewhere = client.options(
            "/api/v1/chats",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert elsewhere.status_code == 400
        assert "access-control-allow-origin" not in elsewhere.headers


def test_without_configured_origins_no_cross_origin_access_is_granted(
    api_client: TestClient,
) -> None:
    response = api_client.get("/healthz", headers={"Origin": CHAT_ORIGIN})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
