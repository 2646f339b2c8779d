"""The body limit refuses before the application reads past the limit, and the OpenAI
request contracts cap the conversation they accept."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pydantic import ValidationError

from haven.body_limit import BodyLimitMiddleware
from haven.contracts.openai import (
    MAX_MESSAGES,
    MAX_TEXT_CHARS,
    ChatCompletionRequest,
    CompletionRequest,
)

LIMIT = 100


class Recorder:
    """An application that reads the whole body, then answers 200 with how much it read."""

    def __init__(self) -> None:
        self.read = 0
        self.parsed = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            self.read += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        self.parsed = True
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(self.read).encode()})


def run(
    chunks: list[bytes], headers: list[tuple[bytes, bytes]]
) -> tuple[Recorder, list[dict[str, Any]], int]:
    app = Recorder()
    sent: list[dict[str, Any]] = []
    delivered = 0

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        index = delivered
        delivered += 1
        more = index < len(chunks) - 1
        return {"type": "http.request", "body": chunks[index], "more_body": more}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/x", "headers": headers}
    asyncio.run(BodyLimitMiddleware(app, LIMIT)(scope, receive, send))
    return app, sent, delivered


def _status(sent: list[dict[str, Any]]) -> int:
    return int(sent[0]["status"])


def test_a_declared_length_over_the_limit_is_refused_unread() -> None:
    app, sent, delivered = run([b"x" * 500], [(b"content-length", b"500")])
    assert _status(sent) == 413 and delivered == 0 and not app.parsed
    body = json.loads(sent[1]["body"])
    assert body["limit"] == LIMIT and str(LIMIT) in body["detail"]


def test_a_streamed_body_is_cut_at_the_limit() -> None:
    app, sent, delivered = run([b"x" * 60] * 10, [(b"transfer-encoding", b"chunked")])
    assert _status(sent) == 413
    assert not app.parsed
    assert delivered == 2  # the second chunk passed the limit; nothing more was read


def test_a_lying_content_length_is_still_counted() -> None:
    app, sent, _ = run([b"x" * 60] * 3, [(b"content-length", b"10")])
    assert _status(sent) == 413 and not app.parsed


def test_bodies_within_the_limit_and_multipart_pass() -> None:
    app, sent, _ = run([b"x" * LIMIT], [(b"content-length", str(LIMIT).encode())])
    assert _status(sent) == 200 and app.parsed
    multipart = [(b"content-type", b"multipart/form-data; boundary=x")]
    app, sent, _ = run([b"x" * 1000], multipart)
    assert _status(sent) == 200 and app.read == 1000


def test_chat_requests_are_capped_in_messages_and_characters() -> None:
    one = {"role": "user", "content": "hi"}
    ChatCompletionRequest.model_validate({"messages": [one] * MAX_MESSAGES})
    with pytest.raises(ValidationError, match="at most 1024"):
        ChatCompletionRequest.model_validate({"messages": [one] * (MAX_MESSAGES + 1)})
    half = {"role": "user", "content": "y" * (MAX_TEXT_CHARS // 2 + 1)}
    with pytest.raises(ValidationError, match="characters"):
        ChatCompletionRequest.model_validate({"messages": [half, half]})
    parts = {"role": "user", "content": [{"type": "text", "text": "y" * (MAX_TEXT_CHARS + 1)}]}
    with pytest.raises(ValidationError, match="characters"):
        ChatCompletionRequest.model_validate({"messages": [parts]})


def test_completion_prompts_are_capped() -> None:
    with pytest.raises(ValidationError, match="characters"):
        CompletionRequest.model_validate({"prompt": "z" * (MAX_TEXT_CHARS + 1)})
    CompletionRequest.model_validate({"prompt": "z" * MAX_TEXT_CHARS})
