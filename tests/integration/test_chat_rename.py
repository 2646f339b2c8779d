"""Renaming a chat (``PATCH /api/v1/chats/{id}``): the owner's sidebar shows the new name;
no one else can rename it or learn it exists; titles a sidebar cannot show are refused."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from haven.db.tables import Role
from tests.fixtures.api import Account, create_user


def new_chat(client: TestClient, who: Account, title: str = "plans") -> str:
    response = client.post("/api/v1/chats", json={"title": title}, headers=who.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def title_of(client: TestClient, who: Account, chat_id: str) -> str:
    response = client.get(f"/api/v1/chats/{chat_id}", headers=who.headers)
    assert response.status_code == 200, response.text
    return str(response.json()["title"])


def test_owner_renames_and_the_list_shows_the_new_title(
    api_client: TestClient, tenant_a: Account
) -> None:
    viewer = create_user(api_client, tenant_a, Role.VIEWER)
    chat_id = new_chat(api_client, viewer)
    response = api_client.patch(
        f"/api/v1/chats/{chat_id}", json={"title": "  Budget 2027 ✓  "}, headers=viewer.headers
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == chat_id and body["title"] == "Budget 2027 ✓"
    assert title_of(api_client, viewer, chat_id) == "Budget 2027 ✓"
    listed = api_client.get("/api/v1/chats", headers=viewer.headers).json()["items"]
    assert [c["title"] for c in listed if c["id"] == chat_id] == ["Budget 2027 ✓"]
    # The longest title a sidebar takes, and a rename of a rename.
    longest = "é" * 200
    response = api_client.patch(
        f"/api/v1/chats/{chat_id}", json={"title": longest}, headers=viewer.headers
    )
    assert response.status_code == 200 and response.json()["title"] == longest


def test_nobody_but_the_owner_can_rename(api_client: TestClient, tenant_a: Account) -> None:
    owner = create_user(api_client, tenant_a, Role.EDITOR)
    chat_id = new_chat(api_client, owner)
    # Another user of the same tenant, the tenant's admin, an application's key: not found.
    colleague = create_user(api_client, tenant_a, Role.EDITOR)
    key = api_client.post(
        "/api/v1/admin/api-keys", json={"name": "app"}, headers=tenant_a.headers
    ).json()["api_key"]
    for headers in (
        colleague.headers,
        tenant_a.headers,
        {"Authorization": f"Bearer {key}"},
    ):
        response = api_client.patch(
            f"/api/v1/chats/{chat_id}", json={"title": "mine now"}, headers=headers
        )
        assert response.status_code == 404, response.text
        assert "plans" not in response.text
    assert api_client.patch(f"/api/v1/chats/{chat_id}", json={"title": "x"}).status_code == 401
    assert title_of(api_client, owner, chat_id) == "plans"


@pytest.mark.parametrize(
    "body",
    [
        {"title": ""},
        {"title": "   \t  "},
        {"title": "x" * 201},
        {"title": "  " + "x" * 201 + "  "},
        {"title": "before\x00after"},
        {"title": "bell\x07"},
        {"title": "two\nlines"},
        {"title": "\x1b[31mred"},
        {"title": "del\x7f"},
        {"title": 42},
        {"title": None},
        {"title": ["a"]},
        {},
    ],
    ids=[
        "empty",
        "blank",
        "too-long",
        "too-long-trimmed",
        "nul",
        "bell",
        "newline",
        "escape",
        "delete",
        "number",
        "null",
        "list",
        "missing",
    ],
)
def test_titles_a_sidebar_cannot_show_are_refused(
    api_client: TestClient, tenant_a: Account, body: dict[str, object]
) -> None:
    chat_id = new_chat(api_client, tenant_a)
    response = api_client.patch(f"/api/v1/chats/{chat_id}", json=body, headers=tenant_a.headers)
    assert response.status_code == 422, response.text
    assert title_of(api_client, tenant_a, chat_id) == "plans"


def test_malformed_and_huge_bodies_and_ids_are_refused(
    api_client: TestClient, tenant_a: Account
) -> None:
    chat_id = new_chat(api_client, tenant_a)
    path = f"/api/v1/chats/{chat_id}"
    headers = {**tenant_a.headers, "Content-Type": "application/json"}
    assert api_client.patch(path, content=b'{"title": ', headers=headers).status_code == 422
    assert api_client.patch(path, content=b"\x00\xff", headers=headers).status_code == 422
    huge = b'{"title": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    assert api_client.patch(path, content=huge, headers=headers).status_code == 413
    for bad in ("not-a-uuid", "%00", "1" * 300):
        response = api_client.patch(
            f"/api/v1/chats/{bad}", json={"title": "x"}, headers=tenant_a.headers
        )
        assert response.status_code in (404, 422), (bad, response.status_code)
    assert title_of(api_client, tenant_a, chat_id) == "plans"
