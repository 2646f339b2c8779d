"""Read-only mode in the API (see ``haven.read_only``): writes refused before they start.

Every request that is not a read (GET, HEAD, OPTIONS) is a write, except the few that only
read or answer: signing in, exchanging an API key for a token, a browser's session refresh
and sign-out, search, a chat question
(answered, its history not stored) and the OpenAI-compatible completions, and the switch
itself. A refused write gets 503 with ``code: read_only``, the operator's reason, since when,
and ``Retry-After``, before its body is read, its caller checked or anything stored.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import retry_after_header
from haven.read_only import ReadOnlySwitch, request_read_only

READS = frozenset({"GET", "HEAD", "OPTIONS"})
# Writes that keep working in read-only mode (path patterns, any method).
ALLOWED_WRITES = tuple(
    re.compile(pattern)
    for pattern in (
        r"^/api/v1/auth/token$",
        r"^/api/v1/auth/api-key$",
        # A browser keeps its session: a reload trades the cookie for a token, and signing
        # out (revoking the session) is never put off.
        r"^/api/v1/auth/refresh$",
        r"^/api/v1/auth/logout$",
        r"^/api/v1/search$",
        r"^/api/v1/chats/[^/]+/messages$",
        r"^/v1/chat/completions$",
        r"^/api/v1/admin/read-only$",
    )
)


def is_write(method: str, path: str) -> bool:
    if method in READS:
        return False
    return not any(pattern.match(path) for pattern in ALLOWED_WRITES)


class ReadOnlyMiddleware:
    def __init__(self, app: ASGIApp, switch: ReadOnlySwitch, retry_after: int) -> None:
        self.app = app
        self.switch = switch
        self.retry_after = retry_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in ("/healthz", "/readyz", "/metrics"):
            await self.app(scope, receive, send)
            return
        state = self.switch.cached() if self.switch.fresh else None
        if state is None:
            state = await run_in_threadpool(self.switch.current)
        if not state.on:
            await self.app(scope, receive, send)
            return
        if is_write(scope["method"], scope["path"]):
            await self._refuse(state.reason, state.since, scope, receive, send)
            return
        token = request_read_only.set(True)
        try:
            await self.app(scope, receive, send)
        finally:
            request_read_only.reset(token)

    async def _refuse(
        self, reason: str | None, since: Any, scope: Scope, receive: Receive, send: Send
    ) -> None:
        body = {
            "detail": "Haven is in read-only mode: changes are paused"
            + (f" ({reason})" if reason else ""),
            "code": "read_only",
            "reason": reason,
            "since": since.isoformat() if since else None,
        }
        response = JSONResponse(body, status_code=503, headers=retry_after_header(self.retry_after))
        await response(scope, receive, send)
