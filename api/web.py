"""The web app's static export (``web/out``) served by the API at ``/``, for ``haven up`` and
any installation that sets ``HAVEN_WEB_DIR`` (production puts nginx in front instead).

It answers only what no API route answers: it is the router's fallback, not a mount, so every
route keeps its own 404 and 405, and paths under the API's prefixes (``/api``, ``/v1``, the
probes, ``/metrics``, the docs) never reach it. A path without a file of its own is a
client-side route: it gets the page that owns it (``/chats/42`` → ``chats.html``, else the
nearest parent's page, else ``index.html``); a missing asset (a name with an extension) stays
404 so that a broken script is not answered with a page.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import anyio
from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

# Paths that belong to the API even when no route matches (their 404 is the API's).
API_PREFIXES = (
    "/api",
    "/v1",
    "/healthz",
    "/readyz",
    "/metrics",
    "/docs",
    "/redoc",
    "/openapi.json",
)
# Next.js puts content-hashed bundles here: they never change under the same name.
IMMUTABLE_PREFIX = "_next/static/"


def belongs_to_api(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in API_PREFIXES)


class WebApp(StaticFiles):
    """``StaticFiles(html=True)`` with the client-side route fallback and cache headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        if "\x00" in path:  # os.stat would raise on it
            raise HTTPException(status_code=404)
        missing: Response | None = None
        try:
            response = await super().get_response(path, scope)
        except HTTPException as exc:
            if exc.status_code != 404:
                raise
        else:
            if response.status_code != 404:
                return _with_cache_headers(response, path)
            missing = response  # the export's own 404.html
        page = await anyio.to_thread.run_sync(self._page_for, path)
        if page is not None:
            return _with_cache_headers(FileResponse(page), page)
        if missing is not None:
            return missing
        raise HTTPException(status_code=404)

    def _page_for(self, path: str) -> str | None:
        """The page of a client-side route: ``<route>.html`` or ``<route>/index.html`` of the
        path or its nearest parent; None for an asset."""
        parts = [p for p in Path(path).parts if p not in (".", "/")]
        if parts and "." in parts[-1]:
            return None
        for end in range(len(parts), -1, -1):
            route = "/".join(parts[:end])
            for candidate in (f"{route}.html", os.path.join(route, "index.html")):
                if not route and candidate == ".html":
                    continue
                try:
                    full_path, found = self.lookup_path(candidate)
                except OSError:  # a name too long for the file system is no page
                    continue
                if found is not None and stat.S_ISREG(found.st_mode):
                    return full_path
        return None


def _with_cache_headers(response: Response, path: str) -> Response:
    if path.replace(os.sep, "/").lstrip("/").startswith(IMMUTABLE_PREFIX):
        response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    elif path.endswith(".html") or "." not in Path(path).name:
        # Pages name the current bundles: always revalidated, so a new build shows at once.
        response.headers["Cache-Control"] = "no-cache"
    return response


def serve_web_app(app: FastAPI, directory: Path) -> None:
    """Answer every GET no route takes (outside the API's prefixes) from ``directory``."""
    web = WebApp(directory=directory, html=True)
    api_fallback = app.router.default

    async def fallback(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not belongs_to_api(scope["path"]):
            await web(scope, receive, send)
            return
        await api_fallback(scope, receive, send)

    app.router.default = fallback
