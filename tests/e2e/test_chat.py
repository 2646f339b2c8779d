"""RAG chat end to end: documents ingested by the worker, questions answered by the API over
SSE with the real emb service (MiniLM) and the real llm service (the tiny GGUF)."""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select

from haven.db.engine import transaction
from haven.db.tables import Chunk, Role
from models.store import registry_from_settings
from tests.e2e.conftest import Stack
from tests.e2e.helpers import upload, wait_for, wait_job
from tests.fixtures.api import Account, create_tenant_with_admin, create_user
from tests.fixtures.processes import ROOT
from tests.fixtures.sse import Event, events_of
from tests.fixtures.tiny_gguf import TINY_CHAT_TEMPLATE, build_tiny_gguf

WAREHOUSE = (
    b"# Warehouse\n\nCopper wire is stored on pallets in aisle twelve of the north warehouse. "
    b"The forklift team moves the copper pallets every Tuesday morning.\n"
)
BUDGET = (
    b"# Budget\n\nThe annual budget review happens in March. The finance team approves "
    b"every travel request above five hundred euros.\n"
)
# Long enough to still be generating when a test acts; always cut short by the test.
LONG = 30000


@dataclass(frozen=True)
class Library:
    owner: Account
    warehouse_id: str
    budget_id: str


@pytest.fixture(scope="module")
def library(stack: Stack, admin: Account) -> Library:
    owner = create_tenant_with_admin(stack.client, admin)
    warehouse = upload(stack, owner, "warehouse.md", WAREHOUSE, source_id="warehouse")
    budget = upload(stack, owner, "budget.md", BUDGET)
    for body in (warehouse, budget):
        wait_job(stack, owner, body["job_id"], {"ready"})
    return Library(owner, warehouse["document"]["id"], budget["document"]["id"])


def new_chat(stack: Stack, who: Account) -> str:
    response = stack.client.post("/api/v1/chats", json={}, headers=who.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def ask(
    stack: Stack,
    who: Account,
    chat_id: str,
    question: str,
    on_done: Callable[[], None] | None = None,
    **extra: Any,
) -> list[Event]:
    """The answer's events; ``on_done`` runs as soon as ``done`` is read, stream still open."""
    body = {"content": question, "max_tokens": 12, "seed": 7, **extra}
    with stack.client.stream(
        "POST", f"/api/v1/chats/{chat_id}/messages", json=body, headers=who.headers
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        events = []
        for event in events_of(response):
            if event.name != "heartbeat":
                events.append(event)
            if event.name == "done" and on_done is not None:
                on_done()
        return events


def llm_info(stack: Stack) -> dict[str, Any]:
    info: dict[str, Any] = httpx.get(f"{stack.env['HAVEN_LLM_URL']}/info", timeout=5).json()
    return info


def llm_metric(stack: Stack, name: str, **labels: str) -> float:
    wanted = name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    text = httpx.get(f"{stack.env['HAVEN_LLM_URL']}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def chunk_tenant(stack: Stack, chunk_id: str) -> str | None:
    with transaction(stack.session_factory) as session:
        found = session.execute(
            select(Chunk.tenant_id).where(Chunk.id == uuid.UUID(chunk_id))
        ).scalar_one_or_none()
        return str(found) if found else None


def test_answer_streams_meta_tokens_done_with_the_tenants_sources(
    stack: Stack, library: Library, admin: Account
) -> None:
    owner = library.owner
    chat_id = new_chat(stack, owner)
    seen_at_done: list[dict[str, Any]] = []

    def read_chat() -> None:
        url = f"/api/v1/chats/{chat_id}/messages"
        seen_at_done.append(stack.client.get(url, headers=owner.headers).json())

    events = ask(stack, owner, chat_id, "Where is the copper wire stored?", on_done=read_chat)

    names = [e.name for e in events]
    assert names[0] == "meta" and names[-1] == "done", names
    assert set(names[1:-1]) == {"token"} and len(names) - 2 >= 3, names

    meta, done = events[0].data, events[-1].data
    assert meta["chat_id"] == chat_id and meta["request_id"]
    sources = meta["sources"]
    assert sources and sources[0]["document_id"] == library.warehouse_id
    assert "aisle twelve" in sources[0]["text"]
    assert [s["n"] for s in sources] == list(range(1, len(sources) + 1))

    # Every [n] the answer may use maps to a chunk that exists and is this tenant's.
    citations = done["citations"]
    assert [c["chunk_id"] for c in citations] == [s["chunk_id"] for s in sources]
    for citation in citations:
        assert chunk_tenant(stack, citation["chunk_id"]) == str(owner.tenant_id)
        document = stack.client.get(
            f"/api/v1/documents/{citation['document_id']}", headers=owner.headers
        )
        assert document.status_code == 200
    assert done["usage"]["completion_tokens"] == 12  # the tiny model never stops by itself
    assert done["cached"] is False

    # Both messages are stored: the question, and the answer with its citations and usage.
    answer = "".join(e.data["text"] for e in events if e.name == "token")
    stored = stack.client.get(f"/api/v1/chats/{chat_id}/messages", headers=owner.headers).json()
    # Stored before ``done`` went out: a client that reloads the chat on ``done`` sees it.
    assert seen_at_done == [stored]
    assert [m["role"] for m in stored["items"]] == ["user", "assistant"]
    assert stored["items"][0]["content"] == "Where is the copper wire stored?"
    assert stored["items"][1]["id"] == done["message_id"] == meta["message_id"]
    assert stored["items"][1]["content"] == answer
    assert stored["items"][1]["citations"] == citations
    assert stored["items"][1]["usage"]["completion_tokens"] == 12
    chats = stack.client.get("/api/v1/chats", headers=owner.headers).json()
    assert chats["items"][0]["title"] == "Where is the copper wire stored?"

    # Another tenant finds nothing of it: the chat is not found, the search is empty.
    other = create_tenant_with_admin(stack.client, admin)
    assert (
        stack.client.get(f"/api/v1/chats/{chat_id}/messages", headers=other.headers).status_code
        == 404
    )
    other_chat = new_chat(stack, other)
    other_events = ask(stack, other, other_chat, "Where is the copper wire stored?")
    assert other_events[0].data["sources"] == []
    assert other_events[-1].name == "done" and other_events[-1].data["citations"] == []


def test_json_answer_and_a_colleague_cannot_read_the_chat(stack: Stack, library: Library) -> None:
    owner = library.owner
    chat_id = new_chat(stack, owner)
    response = stack.client.post(
        f"/api/v1/chats/{chat_id}/messages",
        json={"content": "When is the budget review?", "max_tokens": 6},
        headers={**owner.headers, "Accept": "application/json"},
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["sources"][0]["document_id"] == library.budget_id
    assert answer["usage"]["completion_tokens"] == 6
    assert answer["content"] and answer["cached"] is False
    assert {c["chunk_id"] for c in answer["citations"]} == {
        s["chunk_id"] for s in answer["sources"]
    }

    # A chat is its owner's, even within the tenant.
    colleague = create_user(stack.client, owner, Role.EDITOR)
    assert (
        stack.client.get(f"/api/v1/chats/{chat_id}", headers=colleague.headers).status_code == 404
    )
    assert stack.client.get("/api/v1/chats", headers=colleague.headers).json()["total"] == 0


def test_repeated_question_is_a_cache_hit_until_the_document_is_reingested(
    stack: Stack, library: Library
) -> None:
    owner = library.owner
    question = "How often are the copper pallets moved?"
    first = ask(stack, owner, new_chat(stack, owner), question)
    assert first[-1].data["cached"] is False

    # Asked again (differently spelled) in a new chat: the stored answer, at once.
    again = ask(stack, owner, new_chat(stack, owner), "  how often are the COPPER pallets moved ")
    assert again[-1].name == "done" and again[-1].data["cached"] is True
    text = "".join(e.data["text"] for e in first if e.name == "token")
    assert "".join(e.data["text"] for e in again if e.name == "token") == text
    assert again[-1].data["citations"] == first[-1].data["citations"]

    # A new version of the cited document: the next answer is generated afresh.
    changed = WAREHOUSE.replace(b"Tuesday", b"Thursday")
    body = upload(stack, owner, "warehouse.md", changed, source_id="warehouse")
    assert body["document"]["id"] == library.warehouse_id and body["version"] == 2
    wait_job(stack, owner, body["job_id"], {"ready"})
    after = ask(stack, owner, new_chat(stack, owner), question)
    assert after[-1].data["cached"] is False
    assert "Thursday" in after[0].data["sources"][0]["text"]


def test_client_leaving_mid_stream_frees_the_llm_slot_and_keeps_what_was_said(
    stack: Stack, library: Library
) -> None:
    owner = library.owner
    chat_id = new_chat(stack, owner)
    cancelled = llm_metric(stack, "haven_llm_generations_total", outcome="cancelled")
    body = {"content": "Tell me everything about the warehouse.", "max_tokens": LONG}
    with stack.client.stream(
        "POST", f"/api/v1/chats/{chat_id}/messages", json=body, headers=owner.headers
    ) as response:
        assert response.status_code == 200
        events = events_of(response)  # held: dropping a half-read iterator closes it
        tokens = 0
        while tokens < 3:
            tokens += next(events).name == "token"
        assert llm_info(stack)["active_slots"] == 1
    # The connection is closed here, long before the answer's end.
    wait_for(lambda: llm_info(stack)["active_slots"] == 0, 20, "the llm slot to be freed", 0.05)
    assert llm_metric(stack, "haven_llm_generations_total", outcome="cancelled") == cancelled + 1

    def interrupted() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = stack.client.get(
            f"/api/v1/chats/{chat_id}/messages", headers=owner.headers
        ).json()["items"]
        return items

    wait_for(lambda: len(interrupted()) == 2, 10, "the interrupted answer to be stored", 0.1)
    assistant = interrupted()[1]
    assert assistant["usage"] == {"finish_reason": "interrupted"}
    assert assistant["content"]

    # The only slot serves the next question.
    events_after = ask(stack, owner, new_chat(stack, owner), "Which aisle holds copper?")
    assert events_after[-1].name == "done"


def test_busy_llm_is_an_error_event_and_a_waiting_stream_gets_heartbeats(
    stack: Stack, library: Library
) -> None:
    owner = library.owner
    long_body = {"content": "Describe the budget process in detail.", "max_tokens": LONG}
    url_of = lambda chat: f"/api/v1/chats/{chat}/messages"  # noqa: E731
    waited: list[Event] = []

    def waiting_stream(chat: str) -> None:
        body = {"content": "Who approves travel requests?", "max_tokens": 4}
        with stack.client.stream("POST", url_of(chat), json=body, headers=owner.headers) as r:
            waited.extend(events_of(r))

    with stack.client.stream(
        "POST", url_of(new_chat(stack, owner)), json=long_body, headers=owner.headers
    ) as busy:
        busy_events = events_of(busy)
        while next(busy_events).name != "token":
            pass  # generating: the only slot is taken
        waiter = threading.Thread(target=waiting_stream, args=(new_chat(stack, owner),))
        waiter.start()
        wait_for(lambda: llm_info(stack)["waiting"] == 1, 20, "one answer queued", 0.05)
        # Slot and queue are full: this stream has started (meta) and ends with an error.
        refused = ask(stack, owner, new_chat(stack, owner), "Is the slot free?")
        assert [e.name for e in refused] == ["meta", "error"]
        assert refused[1].data["status"] == 503 and refused[1].data["retry_after"] >= 1
        # The queued stream waits with heartbeats on the wire.
        wait_for(lambda: any(e.name == "heartbeat" for e in waited), 10, "a heartbeat", 0.1)
    waiter.join(timeout=60)
    names = [e.name for e in waited if e.name != "heartbeat"]
    assert names[0] == "meta" and names[-1] == "done", names


def test_openai_client_gets_a_rag_answer_with_citations(stack: Stack, library: Library) -> None:
    owner = library.owner
    key = stack.client.post(
        "/api/v1/admin/api-keys", json={"name": "open-webui"}, headers=owner.headers
    )
    assert key.status_code == 201, key.text
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key.json()["api_key"])
    assert [m.id for m in client.models.list()] == ["haven-rag"]

    messages: list[Any] = [{"role": "user", "content": "Where is the copper wire stored?"}]
    chunks = list(
        client.chat.completions.create(
            model="haven-rag", messages=messages, stream=True, max_tokens=5, seed=3
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    last = chunks[-1]
    assert last.choices[0].finish_reason == "length"
    assert last.usage is not None and last.usage.completion_tokens == 5
    citations = (last.model_extra or {})["citations"]
    assert citations and citations[0]["document_id"] == library.warehouse_id
    assert all(chunk_tenant(stack, c["chunk_id"]) == str(owner.tenant_id) for c in citations)

    # The same question, not streamed: the cached answer, same text and citations.
    whole = client.chat.completions.create(
        model="haven-rag", messages=messages, max_tokens=5, seed=3
    )
    assert whole.choices[0].message.content == text
    assert (whole.model_extra or {})["citations"] == citations

    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=messages)
    bad = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="hvn_abc_not-a-real-key")
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_bad_chat_requests_are_refused_with_the_reason(stack: Stack, library: Library) -> None:
    owner = library.owner
    chat_id = new_chat(stack, owner)
    url = f"/api/v1/chats/{chat_id}/messages"
    for body in (
        {"content": "   "},
        {"content": "x", "search": {"top_k": 0}},
        {"content": "x", "search": {"top_k": 500}},
        {"content": "x", "max_tokens": 0},
    ):
        response = stack.client.post(url, json=body, headers=owner.headers)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["errors"]
    missing = stack.client.post(
        f"/api/v1/chats/{uuid.uuid4()}/messages", json={"content": "hi"}, headers=owner.headers
    )
    assert missing.status_code == 404

    # With the generation service down the question is refused before any stream, with
    # Retry-After; nothing is stored.
    stack.llm.stop()
    try:
        down = stack.client.post(url, json={"content": "Anyone there?"}, headers=owner.headers)
        assert down.status_code == 503, down.text
        assert int(down.headers["Retry-After"]) >= 1
    finally:
        stack.llm.start()
    # The same with the embedding service down: retrieval cannot run.
    stack.emb.stop()
    try:
        down = stack.client.post(url, json={"content": "Anyone there?"}, headers=owner.headers)
        assert down.status_code == 503, down.text
        assert int(down.headers["Retry-After"]) >= 1
        search = stack.client.post(
            "/api/v1/search", json={"query": "copper"}, headers=owner.headers
        )
        assert search.status_code == 503 and int(search.headers["Retry-After"]) >= 1
    finally:
        stack.emb.start()
    stored = stack.client.get(url, headers=owner.headers).json()
    assert stored["total"] == 0


def test_smoke_suite_passes_against_this_haven(stack: Stack, library: Library) -> None:
    done = subprocess.run(
        ["bash", str(ROOT / "stack" / "smoke.sh"), stack.base_url, library.owner.token],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for step in ("ingest job to ready", "hybrid search finds the file", "streamed answer"):
        assert step in done.stdout
    assert "smoke: all 12 steps passed" in done.stdout


def test_another_model_behind_the_same_alias_and_version_answers_afresh(
    stack: Stack, library: Library, tmp_path: Path
) -> None:
    owner = library.owner
    question = "Which team moves the copper pallets?"
    assert ask(stack, owner, new_chat(stack, owner), question)[-1].data["cached"] is False
    assert ask(stack, owner, new_chat(stack, owner), question)[-1].data["cached"] is True

    # Another file (its own template, so its own sha256) published with the same version
    # string, alias chat moved to it, llm restarted: the question is generated again.
    registry = registry_from_settings(stack.settings)
    other = build_tiny_gguf(
        tmp_path / "other", chat_template=TINY_CHAT_TEMPLATE.replace("[ASSISTANT]", "[BOT]")
    )
    before = registry.alias("chat")
    registry.publish(other.path, name="tiny-llama-other", version=before.version, type="llm")
    registry.set_alias("chat", "tiny-llama-other", before.version)
    stack.llm.stop()
    stack.llm.start()
    try:
        assert llm_info(stack)["name"] == "tiny-llama-other"
        after = ask(stack, owner, new_chat(stack, owner), question)
        assert after[-1].name == "done" and after[-1].data["cached"] is False
        assert ask(stack, owner, new_chat(stack, owner), question)[-1].data["cached"] is True
    finally:
        registry.set_alias("chat", before.name, before.version)
        stack.llm.stop()
        stack.llm.start()


def test_every_generation_parameter_is_part_of_the_cache_key(
    stack: Stack, library: Library
) -> None:
    owner = library.owner
    question = "Who approves travel requests above the limit?"

    def done(**extra: Any) -> dict[str, Any]:
        return ask(stack, owner, new_chat(stack, owner), question, **extra)[-1].data

    assert done(max_tokens=5)["cached"] is False
    assert done(max_tokens=5)["cached"] is True
    # A truncated answer is never served to a request that asked for more.
    longer = done(max_tokens=9)
    assert longer["cached"] is False and longer["usage"]["completion_tokens"] == 9
    assert done(max_tokens=5, seed=8)["cached"] is False
    assert done(max_tokens=5, temperature=1.3)["cached"] is False


def test_the_operators_answer_cap_bounds_what_a_request_asks(
    stack: Stack, library: Library
) -> None:
    owner = library.owner
    key = stack.client.post("/api/v1/admin/api-keys", json={"name": "cap"}, headers=owner.headers)
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key.json()["api_key"])
    env = stack.api.env
    stack.api.env = {**env, "HAVEN_CHAT_MAX_ANSWER_TOKENS": "20"}
    stack.restart_api()
    try:
        chat = stack.client.post(
            f"/api/v1/chats/{new_chat(stack, owner)}/messages",
            json={"content": "Where is the copper wire stored?", "max_tokens": 100_000},
            headers={**owner.headers, "Accept": "application/json"},
        )
        assert chat.status_code == 200, chat.text
        assert chat.json()["usage"]["completion_tokens"] == 20
        assert chat.json()["finish_reason"] == "length"
        whole = client.chat.completions.create(
            model="haven-rag",
            messages=[{"role": "user", "content": "When is the budget review?"}],
            max_tokens=100_000,
        )
        assert whole.usage is not None and whole.usage.completion_tokens == 20
        assert whole.choices[0].finish_reason == "length"

        # An operator cap above the model's context, and a client asking for all of it:
        # the answer used to take the whole context, every passage was left out of the
        # prompt and the streamed answer ended with "citations": []. The best passage now
        # keeps its room. (Common letters as stop strings end the answer at once.)
        stack.api.env = {**env, "HAVEN_CHAT_MAX_ANSWER_TOKENS": "1000000"}
        stack.restart_api()
        chunks = list(
            client.chat.completions.create(
                model="haven-rag",
                messages=[{"role": "user", "content": "Where is the copper wire stored?"}],
                max_tokens=100_000,
                stop=[" ", "e", "a", "t"],
                stream=True,
            )
        )
        citations = (chunks[-1].model_extra or {})["citations"]
        assert citations, "the streamed answer came without its sources"
        assert citations[0]["document_id"] == library.warehouse_id
    finally:
        stack.api.env = env
        stack.restart_api()


def test_an_empty_answer_says_so_and_still_lists_every_source(
    stack: Stack, library: Library
) -> None:
    owner = library.owner
    key = stack.client.post("/api/v1/admin/api-keys", json={"name": "empty"}, headers=owner.headers)
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key.json()["api_key"])
    messages: list[Any] = [{"role": "user", "content": "Is copper kept in the north warehouse?"}]
    said = (
        client.chat.completions.create(model="haven-rag", messages=messages, max_tokens=6, seed=11)
        .choices[0]
        .message.content
    )
    assert said and said.strip()
    # The same generation, stopped at its first visible characters: nothing is left to show.
    stop = said.strip()[:3]
    for stream in (False, True):
        if stream:
            chunks = list(
                client.chat.completions.create(
                    model="haven-rag",
                    messages=messages,
                    max_tokens=6,
                    seed=11,
                    stop=[stop],
                    stream=True,
                )
            )
            content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            extra = chunks[-1].model_extra or {}
        else:
            answer = client.chat.completions.create(
                model="haven-rag", messages=messages, max_tokens=6, seed=11, stop=[stop]
            )
            content, extra = answer.choices[0].message.content or "", answer.model_extra or {}
        assert "The model gave no answer" in content
        assert extra["finish_reason_detail"] == "empty"
        citations = extra["citations"]
        assert citations and citations[0]["document_id"] == library.warehouse_id
        assert not any(c["cited"] for c in citations)
        # The notice names every source offered.
        assert all(f"[{c['n']}]" in content for c in citations)
