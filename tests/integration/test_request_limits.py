"""Request bodies are bounded before anything parses them, and OpenAI-style requests carry a
bounded conversation: oversized bodies get 413 naming the limit, over-long message lists a
clear 422 (not a 502 from deeper down)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings
from haven.contracts.openai import MAX_MESSAGES, MAX_TEXT_CHARS
from tests.fixtures.api import Account, bootstrap_platform_admin, create_tenant_with_admin, upload

LIMIT = 4096


@pytest.fixture()
def small_limit_client(store_overrides: dict[str, Any]) -> Iterator[TestClient]:
    settings = ApiSettings(**{**store_overrides, "max_json_body_bytes": LIMIT})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture()
def admin(small_limit_client: TestClient) -> Account:
    factory = small_limit_client.app.state.runtime.session_factory  # type: ignore[attr-defined]
    return create_tenant_with_admin(
        small_limit_client, bootstrap_platform_admin(factory, small_limit_client)
    )


def _is_413(response: Any) -> None:
    assert response.status_code == 413, response.text
    body = response.json()
    assert body["limit"] == LIMIT
    assert str(LIMIT) in body["detail"]


def test_an_oversized_json_body_is_refused_before_it_is_parsed(
    small_limit_client: TestClient, admin: Account
) -> None:
    # Not even JSON, and sent without a token: parsing would say 422, auth 401; the size
    # is checked first.
    junk = b"{" * (LIMIT + 1)
    headers = {"content-type": "application/json"}
    _is_413(small_limit_client.post("/api/v1/search", content=junk, headers=headers))
    # With a valid token and valid JSON, just too big.
    big = {"query": "x" * (LIMIT + 10)}
    _is_413(small_limit_client.post("/api/v1/search", json=big, headers=admin.headers))
    # A sign-in form too.
    form = {"username": "u" * LIMIT, "password": "p"}
    _is_413(small_limit_client.post("/api/v1/auth/token", data=form))


def test_a_streamed_body_without_a_length_is_counted(small_limit_client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b" " * 1024

    response = small_limit_client.post(
        "/api/v1/auth/api-key", content=chunks(), headers={"content-type": "application/json"}
    )
    _is_413(response)


def test_small_bodies_and_multipart_uploads_are_not_affected(
    small_limit_client: TestClient, admin: Account
) -> None:
    me = small_limit_client.post(
        "/api/v1/admin/users",
        json={"username": "just-fine@x", "password": "long-enough-pw", "role": "viewer"},
        headers=admin.headers,
    )
    assert me.status_code == 201
    # An upload far over the JSON limit goes through: uploads have their own limit.
    response = upload(small_limit_client, admin, b"word " * (4 * LIMIT), name="big.txt")
    assert response.status_code == 201, response.text


def _chat(messages: list[dict[str, str]]) -> dict[str, Any]:
    return {"model": "haven-rag", "messages": messages}


def test_openai_route_refuses_too_many_messages_with_a_422(
    api_client: TestClient, tenant_a: Account
) -> None:
    messages = [{"role": "user", "content": "hi"}] * (MAX_MESSAGES + 1)
    response = api_client.post(
        "/v1/chat/completions", json=_chat(messages), headers=tenant_a.headers
    )
    assert response.status_code == 422, response.text
    assert "messages" in response.text


def test_openai_route_refuses_too_much_text_with_a_422(
    api_client: TestClient, tenant_a: Account
) -> None:
    messages = [{"role": "user", "content": "y" * (MAX_TEXT_CHARS // 2 + 1)}] * 2
    response = api_client.post(
        "/v1/chat/completions", json=_chat(messages), headers=tenant_a.headers
    )
    assert response.status_code == 422, response.text
    assert str(MAX_TEXT_CHARS) in response.text
