"""The generation service end to end: a real llama.cpp model (the tiny GGUF), published
through the real registry to a real S3 endpoint, served by uvicorn on a loopback port and
driven over HTTP as clients drive it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jinja2
import openai
import pytest

from models.manifest import sha256_file
from models.store import registry_from_settings
from tests.fixtures.llm_service import (
    ALIAS,
    CONTEXT,
    Service,
    make_settings,
    running,
    tiny_service,
    wait_loaded,
)
from tests.fixtures.tiny_gguf import (
    TINY_CHAT_TEMPLATE,
    TINY_NAME,
    TinyModel,
    build_tiny_gguf,
    publish_tiny_gguf,
    train_tokenizer,
)

# Long enough (several seconds of generation) that a test can act while a slot is busy;
# the requests that ask for it are always cancelled long before the end.
LONG = CONTEXT - 512
MESSAGES = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Hello there, how are the documents today?"},
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return build_tiny_gguf(tmp_path_factory.mktemp("tiny-gguf"))


@pytest.fixture(scope="module")
def shared_service(
    s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory, tiny_model: TinyModel
) -> Iterator[Service]:
    """One service for the tests that do not depend on the slot configuration."""
    with tiny_service(s3_endpoint, tmp_path_factory.mktemp("llm"), tiny_model) as service:
        yield service


def expected_prompt_tokens(messages: list[dict[str, str]]) -> int:
    """Counted independently of the service: the template rendered by plain Jinja and the
    text encoded by sentencepiece itself (the tokenizer the GGUF was built from)."""
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, autoescape=False)
    rendered = env.from_string(TINY_CHAT_TEMPLATE).render(
        messages=messages, add_generation_prompt=True, bos_token="", eos_token=""
    )
    return 1 + len(train_tokenizer().encode(rendered))  # 1: the BOS the template writes


def sse_events(response: httpx.Response) -> Iterator[str]:
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield line[len("data: ") :]


def stream_chat(url: str, body: dict[str, Any]) -> list[str]:
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=30
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(sse_events(response))


# -- generation ----------------------------------------------------------------------------


def test_streamed_and_plain_chat_give_the_same_tokens_and_usage(shared_service: Service) -> None:
    body = {"model": ALIAS, "messages": MESSAGES, "max_tokens": 12, "seed": 7, "top_p": 0.9}
    plain = httpx.post(f"{shared_service.url}/v1/chat/completions", json=body, timeout=30)
    assert plain.status_code == 200, plain.text
    answer = plain.json()
    prompt_tokens = expected_prompt_tokens(MESSAGES)
    assert answer["object"] == "chat.completion"
    assert answer["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 12,
        "total_tokens": prompt_tokens + 12,
    }
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"]

    events = stream_chat(shared_service.url, body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    # Same seed, same model: the stream carries exactly the text of the plain answer.
    assert text == choice["message"]["content"]
    assert len([c for c in chunks if c["choices"][0]["delta"].get("content")]) > 1
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"] == answer["usage"]


def test_stop_string_ends_the_answer_before_it(shared_service: Service) -> None:
    body = {"messages": MESSAGES, "max_tokens": 40, "temperature": 0}
    url = f"{shared_service.url}/v1/chat/completions"
    full = httpx.post(url, json=body, timeout=30).json()["choices"][0]["message"]["content"]
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), f"pick a visible stop string from {full!r}"
    stopped = httpx.post(url, json={**body, "stop": [stop]}, timeout=30).json()
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert stopped["choices"][0]["message"]["content"] == full[: full.index(stop)]
    assert stopped["usage"]["completion_tokens"] < 40

    events = stream_chat(shared_service.url, {**body, "stop": stop})
    chunks = [json.loads(event) for event in events[:-1]]
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert streamed == full[: full.index(stop)]


def test_openai_client_streams_unchanged(shared_service: Service) -> None:
    client = openai.OpenAI(base_url=f"{shared_service.url}/v1", api_key="not-checked")
    try:
        stream = client.chat.completions.create(
            model=ALIAS,
            messages=[
                {"role": "system", "content": MESSAGES[0]["content"]},
                {"role": "user", "content": MESSAGES[1]["content"]},
            ],
            max_tokens=10,
            seed=3,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text
        assert chunks[-1].choices[0].finish_reason == "length"
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 10
        assert chunks[-1].usage.prompt_tokens == expected_prompt_tokens(MESSAGES)

        completion = client.completions.create(
            model=ALIAS, prompt="The quick brown fox", max_tokens=5, seed=1
        )
        assert completion.choices[0].text
        assert completion.usage is not None
        assert completion.usage.completion_tokens == 5
        # BOS + the prompt as sentencepiece encodes it.
        assert completion.usage.prompt_tokens == 1 + len(
            train_tokenizer().encode("The quick brown fox")
        )

        streamed = client.completions.create(
            model=ALIAS, prompt="The quick brown fox", max_tokens=5, seed=1, stream=True
        )
        assert "".join(c.choices[0].text for c in streamed) == completion.choices[0].text

        listed = client.models.list()
        assert [m.id for m in listed.data] == [ALIAS]
    finally:
        client.close()


# -- limits and backpressure ---------------------------------------------------------------


def test_client_that_disconnects_after_three_tokens_frees_the_slot(
    s3_endpoint: str, tmp_path: Path, tiny_model: TinyModel
) -> None:
    with tiny_service(s3_endpoint, tmp_path, tiny_model, llm_slots=1, llm_queue=0) as service:
        body = {"messages": MESSAGES, "max_tokens": LONG, "stream": True}
        with httpx.stream(
            "POST", f"{service.url}/v1/chat/completions", json=body, timeout=30
        ) as response:
            assert response.status_code == 200
            # Held in a variable: dropping a half-read iterator closes the connection.
            events = sse_events(response)
            tokens = 0
            while tokens < 3:
                if json.loads(next(events))["choices"][0]["delta"].get("content"):
                    tokens += 1
            assert service.info()["active_slots"] == 1
        # The connection is closed here, thousands of tokens before max_tokens.
        service.wait_until(lambda: service.info()["active_slots"] == 0, "slot freed")
        assert service.metric("haven_llm_generations_total", outcome="cancelled") == 1
        assert service.metric("haven_llm_tokens_generated_total") < LONG / 2

        # One slot, no queue: this is refused unless the slot really is free.
        answer = httpx.post(
            f"{service.url}/v1/chat/completions",
            json={"messages": MESSAGES, "max_tokens": 4},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] == 4


def test_full_slots_and_queue_refuse_at_once_with_retry_after(
    s3_endpoint: str, tmp_path: Path, tiny_model: TinyModel
) -> None:
    with tiny_service(s3_endpoint, tmp_path, tiny_model, llm_slots=1, llm_queue=1) as service:
        url = f"{service.url}/v1/chat/completions"
        long_body = {"messages": MESSAGES, "max_tokens": LONG, "stream": True}
        queued: dict[str, Any] = {}

        def queued_request() -> None:
            answer = httpx.post(url, json={"messages": MESSAGES, "max_tokens": 3}, timeout=60)
            queued["status"] = answer.status_code
            queued["body"] = answer.json()

        with httpx.stream("POST", url, json=long_body, timeout=30) as busy:
            assert busy.status_code == 200
            busy_events = sse_events(busy)
            next(busy_events)  # generating: the only slot is taken
            waiter = threading.Thread(target=queued_request)
            waiter.start()
            service.wait_until(lambda: service.info()["waiting"] == 1, "one request queued")

            refused = httpx.post(url, json={"messages": MESSAGES, "max_tokens": 3}, timeout=30)
            assert refused.status_code == 503
            assert int(refused.headers["Retry-After"]) >= 1
            assert refused.json()["error"]["code"] == "queue_full"
            assert service.metric("haven_llm_rejections_total", reason="queue_full") == 1
            assert service.info()["waiting"] == 1  # the queued one is still waiting
        # Closing the busy stream frees the slot for the queued request.
        waiter.join(timeout=60)
        assert queued["status"] == 200, queued
        assert queued["body"]["usage"]["completion_tokens"] == 3


def test_tampered_gguf_is_never_served(
    s3_endpoint: str, tmp_path: Path, tiny_model: TinyModel
) -> None:
    settings = make_settings(s3_endpoint, tmp_path / "cache")
    registry = registry_from_settings(settings)
    manifest = publish_tiny_gguf(registry, tiny_model, alias=ALIAS)
    key = registry.object_key(manifest, manifest.files[0])
    stored = registry.client.get_object(registry.bucket, key)
    try:
        data = bytearray(stored.read())
    finally:
        stored.close()
        stored.release_conn()
    data[len(data) // 2] ^= 0x01  # one flipped bit in the weights
    tampered = tmp_path / "tampered.gguf"
    tampered.write_bytes(bytes(data))
    registry.client.fput_object(registry.bucket, key, str(tampered))

    with running(settings) as url:
        ready = wait_loaded(url)
        assert ready.status_code == 503
        assert ready.json()["status"] == "failed"
        assert ready.json()["failed_file"] == manifest.files[0].path
        assert "verification" in ready.json()["error"]

        answer = httpx.post(
            f"{url}/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 3}, timeout=30
        )
        assert answer.status_code == 503
        assert "Retry-After" in answer.headers
        assert "sha256" not in httpx.get(f"{url}/info", timeout=5).json()
    # Nothing of the tampered file was left where a later start would load it.
    assert not list((tmp_path / "cache").rglob("*.gguf"))


def test_warm_downloads_another_version_into_the_cache_without_serving_it(
    shared_service: Service, tiny_model: TinyModel
) -> None:
    """The warmup task's call: after an alias switch, the next start finds the new version
    local and verified instead of waiting for the object store."""
    newer = publish_tiny_gguf(
        shared_service.registry, tiny_model, alias="chat-next", version="2-warm"
    )
    folder = shared_service.settings.cache_dir / newer.name / newer.version
    assert not folder.exists()
    url = f"{shared_service.url}/warm"

    response = httpx.post(url, json={"models": [newer.ref]}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json() == {"cached": [newer.ref]}
    cached = folder / newer.files[0].path
    assert sha256_file(cached) == newer.files[0].sha256
    # Downloaded, not loaded: the service still answers with the version it started with.
    assert shared_service.info()["version"] == shared_service.manifest.version

    for refused in (["nope/1"], ["a\x00/1"], [shared_service.manifest.name]):
        answer = httpx.post(url, json={"models": refused}, timeout=30)
        assert answer.status_code == 404, (refused, answer.text)
    assert httpx.post(url, json={"models": []}, timeout=30).status_code == 422


# -- bad input -----------------------------------------------------------------------------


def test_bad_requests_are_refused_with_the_reason(shared_service: Service) -> None:
    url = f"{shared_service.url}/v1/chat/completions"

    unknown = httpx.post(url, json={"model": "gpt-4", "messages": MESSAGES}, timeout=10)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"

    hot = httpx.post(url, json={"messages": MESSAGES, "temperature": 5}, timeout=10)
    assert hot.status_code == 422
    assert hot.json()["error"]["param"] == "temperature"

    no_messages = httpx.post(url, json={"max_tokens": 3}, timeout=10)
    assert no_messages.status_code == 422
    assert no_messages.json()["error"]["param"] == "messages"

    bad_role = httpx.post(url, json={"messages": [{"role": "robot", "content": "x"}]}, timeout=10)
    assert bad_role.status_code == 422
    assert bad_role.json()["error"]["param"] == "messages.0.role"

    too_long = httpx.post(url, json={"messages": MESSAGES, "max_tokens": CONTEXT}, timeout=10)
    assert too_long.status_code == 400
    error = too_long.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert error["prompt_tokens"] == expected_prompt_tokens(MESSAGES)
    assert error["max_tokens"] == CONTEXT
    assert error["context_length"] == CONTEXT

    not_json = httpx.post(
        url, content=b"{not json", headers={"content-type": "application/json"}, timeout=10
    )
    assert not_json.status_code == 422


# -- operations ----------------------------------------------------------------------------


def test_info_and_metrics_describe_the_served_model(
    shared_service: Service, tiny_model: TinyModel
) -> None:
    assert httpx.get(f"{shared_service.url}/healthz", timeout=5).json() == {"status": "ok"}
    info = shared_service.info()
    assert info["alias"] == ALIAS
    assert info["name"] == TINY_NAME
    assert info["version"] == shared_service.manifest.version
    assert info["sha256"] == sha256_file(tiny_model.path)
    assert info["context_length"] == CONTEXT
    assert info["threads"] == 1
    assert info["slots"] == 1
    assert info["chat_template"] == "gguf"

    before = shared_service.metric("haven_llm_tokens_generated_total")
    answer = httpx.post(
        f"{shared_service.url}/v1/chat/completions",
        json={"messages": MESSAGES, "max_tokens": 6},
        timeout=30,
    )
    assert answer.status_code == 200
    assert shared_service.metric("haven_llm_tokens_generated_total") == before + 6
    assert shared_service.metric("haven_llm_time_to_first_token_seconds_count") >= 1
    assert shared_service.metric("haven_llm_tokens_per_second_count") >= 1
    assert shared_service.metric("haven_llm_slots") == 1
    assert shared_service.metric("haven_llm_queue_depth") == 0
