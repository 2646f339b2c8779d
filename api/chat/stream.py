"""Server-sent events for chat answers.

Events: ``meta`` (request id, the sources), ``token`` (a text delta), ``done`` (usage,
citations, ``cached``), ``error`` (the reason, with the status and ``retry_after`` the same
failure gets before a stream starts). A comment line goes out whenever the stream has been
quiet for the heartbeat interval, so proxies and browsers keep an idle stream open.

``AnswerStream`` ends the answer however the response ends: the answer's generator is closed
when the client goes away (which closes the connection to llm, whose slot is then freed), and
its ``on_close`` hook runs, shielded from the cancellation, to store what was answered.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from haven.ops_metrics import counted_stream

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
HEARTBEAT = ": keep-alive\n\n"
# How long cleaning up after a stream (storing the answer) may take once the client is gone.
CLOSE_TIMEOUT_SECONDS = 10.0


def sse_event(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def with_heartbeat(events: AsyncIterator[str], interval: float) -> AsyncIterator[str]:
    """``events``, with ``HEARTBEAT`` whenever nothing came for ``interval`` seconds.

    The next event is awaited in its own task, so a heartbeat never interrupts it."""
    iterator = aiter(events)
    pending: asyncio.Future[str] = asyncio.ensure_future(anext(iterator))
    try:
        while True:
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield HEARTBEAT
                continue
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            yield item
            pending = asyncio.ensure_future(anext(iterator))
    finally:
        # Cancelling the pending step throws into the answer's generator where it waits
        # (reading llm's stream), which closes that connection.
        pending.cancel()
        with anyio.CancelScope(shield=True):
            with suppress(BaseException):
                await pending
            with suppress(BaseException):
                await iterator.aclose()  # type: ignore[attr-defined]


class AnswerStream(StreamingResponse):
    def __init__(
        self, content: AsyncIterator[str], on_close: Callable[[], Awaitable[None]]
    ) -> None:
        super().__init__(content, media_type="text/event-stream", headers=SSE_HEADERS)
        self.on_close = on_close

    @counted_stream  # haven_sse_streams_active{route} while the answer is sent
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.move_on_after(CLOSE_TIMEOUT_SECONDS, shield=True):
                body = self.body_iterator
                if hasattr(body, "aclose"):
                    with suppress(BaseException):
                        await body.aclose()
                await self.on_close()
