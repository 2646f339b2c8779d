"""The API serves the web app's static export at ``/`` (``haven up``, ``HAVEN_WEB_DIR``):
pages, their assets, client-side routes falling back to their page, and never in the way of
the API's own paths."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings
from devstack import up

PAGES = {
    "index.html": "<html><body>home page</body></html>",
    "chat.html": "<html><body>chat page</body></html>",
    "documents.html": "<html><body>documents page</body></html>",
    "admin/index.html": "<html><body>admin page</body></html>",
    "404.html": "<html><body>no such page</body></html>",
    "_next/static/chunks/app-3f9a.js": "console.log('app')",
    "favicon.ico": "icon",
}


def write_export(folder: Path) -> Path:
    for name, text in PAGES.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


@pytest.fixture()
def web(store_overrides: dict[str, Any], tmp_path: Path) -> Iterator[TestClient]:
    settings = ApiSettings(**store_overrides, web_dir=write_export(tmp_path / "out"))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def page(client: TestClient, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200, (path, response.status_code, response.text)
    assert response.headers["content-type"].startswith("text/html"), path
    assert response.headers["cache-control"] == "no-cache", path
    return response.text


def test_pages_assets_and_client_side_routes(web: TestClient) -> None:
    assert "home page" in page(web, "/")
    assert "chat page" in page(web, "/chat")
    assert "chat page" in page(web, "/chat/")
    assert "admin page" in page(web, "/admin/")
    # Client-side routes: the page that owns them, else the nearest parent's, else home.
    assert "chat page" in page(web, "/chat/3f0c1a52-7d55-4f0e-9a57-1f9ab2a1c0de")
    assert "documents page" in page(web, "/documents/versions/2")
    assert "admin page" in page(web, "/admin/users")
    assert "home page" in page(web, "/settings")
    assert "home page" in page(web, "/" + "a" * 5000)

    asset = web.get("/_next/static/chunks/app-3f9a.js")
    assert asset.status_code == 200 and asset.text == "console.log('app')"
    assert "immutable" in asset.headers["cache-control"]
    assert web.get("/favicon.ico").text == "icon"
    # A missing asset is not answered with a page (a broken script would run HTML).
    missing = web.get("/_next/static/chunks/gone-1234.js")
    assert missing.status_code == 404 and "app" not in missing.text
    assert web.get("/logo.png").status_code == 404


def test_the_api_paths_are_never_shadowed(web: TestClient) -> None:
    assert web.get("/healthz").json() == {"status": "ok"}
    assert web.get("/readyz").status_code in (200, 503)
    assert "haven" in web.get("/metrics").text
    assert "swagger" in web.get("/docs").text.lower()
    assert web.get("/openapi.json").json()["info"]["title"] == "Haven API"
    assert "version" in web.get("/api/version").json()
    # Unknown API paths keep the API's answers: JSON 404, 401, 405; never the app's pages.
    for path in ("/api/v1/nope", "/api", "/api/", "/v1/nope", "/docs/x", "/metrics/x"):
        response = web.get(path)
        assert response.status_code == 404, (path, response.text)
        assert "page" not in response.text, path
    assert web.get("/api/v1/chats").status_code == 401
    assert web.put("/api/v1/chats").status_code == 405
    assert web.get("/v1/models").status_code == 401


def test_hostile_paths_and_methods(web: TestClient, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("outside the export")
    for raw in ("/..%2fsecret.txt", "/%2e%2e/secret.txt", "/chat/..%2f..%2fsecret.txt"):
        response = web.get(raw)
        assert "outside the export" not in response.text, raw
        assert response.status_code in (200, 404), raw
    assert web.get("/%00").status_code == 404
    assert web.get("/chat%00.html").status_code == 404
    assert web.post("/chat").status_code == 405
    assert web.delete("/").status_code == 405
    assert web.head("/chat").status_code == 200


def test_no_web_app_without_a_folder(store_overrides: dict[str, Any], tmp_path: Path) -> None:
    for web_dir in (None, tmp_path / "not-built"):
        settings = ApiSettings(**store_overrides, web_dir=web_dir)
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            assert client.get("/").status_code == 404
            assert client.get("/chat").status_code == 404
            assert client.get("/healthz").status_code == 200


def test_haven_up_serves_the_built_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAVEN_JWT_KEYS", '{"k": "' + "k" * 40 + '"}')
    monkeypatch.setenv("HAVEN_S3_ENDPOINT", "127.0.0.1:9")
    monkeypatch.delenv("HAVEN_WEB_DIR", raising=False)
    monkeypatch.setattr(up, "ROOT", tmp_path)
    env, _ = up._environment(tmp_path / "var")
    assert "HAVEN_WEB_DIR" not in env  # not built yet: nothing to serve
    write_export(tmp_path / "web" / "out")
    env, _ = up._environment(tmp_path / "var")
    assert env["HAVEN_WEB_DIR"] == str(tmp_path / "web" / "out")
    # An operator's own folder wins.
    monkeypatch.setenv("HAVEN_WEB_DIR", "/srv/web")
    assert "HAVEN_WEB_DIR" not in up._environment(tmp_path / "var")[0]
