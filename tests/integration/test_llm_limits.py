"""The generation service refuses what no context could hold before tokenising it: a body over
its size limit (413), more than MAX_MESSAGES messages (422), in OpenAI's error shape; a
conversation within the caps is answered, never a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from haven.contracts.openai import MAX_MESSAGES
from tests.fixtures.llm_service import Service, tiny_service
from tests.fixtures.tiny_gguf import TinyModel, build_tiny_gguf

BODY_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def service(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    model: TinyModel = build_tiny_gguf(tmp_path_factory.mktemp("tiny-gguf"))
    folder: Path = tmp_path_factory.mktemp("llm")
    with tiny_service(s3_endpoint, folder, model, llm_max_body_bytes=BODY_LIMIT) as running:
        yield running


def _post(service: Service, path: str, body: object) -> httpx.Response:
    return httpx.post(f"{service.url}{path}", json=body, timeout=60)


def test_more_messages_than_the_cap_is_a_clear_422(service: Service) -> None:
    messages = [{"role": "user", "content": "hi"}] * (MAX_MESSAGES + 1)
    for path, body in [
        ("/v1/chat/completions", {"messages": messages, "max_tokens": 1}),
        ("/tokenize", {"messages": messages}),
    ]:
        response = _post(service, path, body)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["param"] == "messages"


def test_a_full_conversation_within_the_caps_is_answered(service: Service) -> None:
    """Exactly MAX_MESSAGES short messages: counted and answered, not a 5xx."""
    messages = [
        {"role": "user" if n % 2 == 0 else "assistant", "content": "ok"}
        for n in range(MAX_MESSAGES - 1)
    ] + [{"role": "user", "content": "and now?"}]
    counted = _post(service, "/tokenize", {"messages": messages, "texts": ["a"] * MAX_MESSAGES})
    assert counted.status_code == 200, counted.text
    assert counted.json()["prompt_tokens"] > MAX_MESSAGES
    answer = _post(service, "/v1/chat/completions", {"messages": messages, "max_tokens": 2})
    assert answer.status_code == 200, answer.text


def test_a_body_over_the_limit_is_a_413_before_parsing(service: Service) -> None:
    response = httpx.post(
        f"{service.url}/v1/chat/completions",
        content=b"[" * (BODY_LIMIT + 1),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "request_too_large" and error["limit"] == BODY_LIMIT
