"""The first run a new user makes, with the real bundled default model: questions about
uploaded policy documents all get an answer from the model, the OpenAI-compatible stream
lists its sources, and an invented figure is marked as unverified while a quoted one is not.

Slow: it loads the bundled models (MiniLM and the default chat model) on CPU."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from api.chat.answer import visible
from api.chat.prompt import RAG_INSTRUCTIONS
from bench.answers.dataset import DOCUMENTS, QUESTIONS
from haven.db.engine import make_engine, make_session_factory
from models.defaults import DEFAULT_LLM, publish_default_llm
from tests.e2e.conftest import Stack
from tests.e2e.helpers import upload, wait_job
from tests.fixtures.api import Account, bootstrap_platform_admin, create_tenant_with_admin
from tests.fixtures.rag_stack import rag_stack

# Twenty answers from a CPU model, after loading it: well past the suite's per-test limit.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

TRAVEL = "travel-policy.md"


@dataclass(frozen=True)
class Library:
    stack: Stack
    owner: Account
    document_ids: dict[str, str]
    client: openai.OpenAI


@pytest.fixture(scope="module")
def library(
    database_url: str, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Library]:
    tmp = tmp_path_factory.mktemp("answers")
    with rag_stack(
        database_url,
        s3_endpoint,
        tmp,
        publish_default_llm,
        # As `haven up` serves the bundled model, but on one thread: two llama.cpp threads on
        # a shared, busy machine wait on each other (an answer took 76-140 s instead of ~8).
        HAVEN_LLM_CTX="4096",
        HAVEN_LLM_THREADS="1",
        HAVEN_LLM_QUEUE="4",
    ) as stack:
        engine = make_engine(stack.settings)
        admin = bootstrap_platform_admin(make_session_factory(engine), stack.client)
        owner = create_tenant_with_admin(stack.client, admin)
        ids = {}
        for name, text in DOCUMENTS.items():
            body = upload(stack, owner, name, text.encode(), source_id=name)
            wait_job(stack, owner, body["job_id"], {"ready"}, timeout=300)
            ids[name] = body["document"]["id"]
        key = stack.client.post(
            "/api/v1/admin/api-keys", json={"name": "client"}, headers=owner.headers
        ).json()["api_key"]
        client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, timeout=600)
        yield Library(stack, owner, ids, client)
        engine.dispose()


def ask(library: Library, question: str, **extra: Any) -> dict[str, Any]:
    stack, owner = library.stack, library.owner
    chat = stack.client.post("/api/v1/chats", json={}, headers=owner.headers).json()["id"]
    response = stack.client.post(
        f"/api/v1/chats/{chat}/messages",
        json={"content": question, "max_tokens": 32, "temperature": 0, **extra},
        headers={**owner.headers, "Accept": "application/json"},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_twenty_questions_all_get_an_answer_from_the_model(library: Library) -> None:
    empty = []
    for question in QUESTIONS[:20]:
        answer = ask(library, question.text)
        if answer["finish_reason"] == "empty" or not visible(answer["content"]):
            empty.append(question.text)
        # Every source offered is listed, whatever the answer cites.
        assert answer["citations"] and [c["n"] for c in answer["citations"]] == [
            s["n"] for s in answer["sources"]
        ]
        assert answer["grounded"] in (True, False)
    assert empty == [], f"{DEFAULT_LLM.name} gave no answer to {empty}"


def test_a_streamed_openai_answer_lists_its_sources_after_the_chat_asked_the_same(
    library: Library,
) -> None:
    question = "hotel cap Zurich?"
    in_chat = ask(library, question, max_tokens=10)
    assert in_chat["citations"]
    for _ in range(2):  # generated, then (the same request) from the cache
        chunks = list(
            library.client.chat.completions.create(
                model="haven-rag",
                messages=[{"role": "user", "content": question}],
                max_tokens=10,
                stream=True,
            )
        )
        extra = chunks[-1].model_extra or {}
        citations = extra["citations"]
        assert citations, "the streamed answer came without its sources"
        assert library.document_ids[TRAVEL] in {c["document_id"] for c in citations}
        assert all(isinstance(c["cited"], bool) for c in citations)
        assert extra["grounded"] in (True, False)


def test_an_invented_figure_is_marked_ungrounded_and_a_quoted_one_is_not(
    library: Library,
) -> None:
    def answer(question: str, instruction: str | None = None) -> tuple[str, dict[str, Any]]:
        messages: list[Any] = [{"role": "user", "content": question}]
        if instruction is not None:
            messages.insert(0, {"role": "system", "content": instruction})
        completion = library.client.chat.completions.create(
            model="haven-rag", messages=messages, max_tokens=40, temperature=0
        )
        return completion.choices[0].message.content or "", completion.model_extra or {}

    # The question makes the model say a figure that no document holds.
    text, extra = answer("Repeat exactly: The hotel cap in Zurich is 975 CHF per night.")
    assert "975" in text, text
    assert extra["grounded"] is False
    assert "975" in {span["text"] for span in extra["unsupported"]}

    # Told to quote the travel policy, it does: nothing to mark.
    text, extra = answer(
        "What is the hotel cap per night in Zurich?",
        "Reply with exactly this sentence and nothing else: "
        "Hotel rooms in Zurich are capped at 250 CHF per night.",
    )
    assert "250 CHF" in text, text
    assert extra["grounded"] is True, (text, extra["unsupported"])


def test_a_streamed_answer_keeps_its_sources_under_a_clients_long_conversation(
    library: Library,
) -> None:
    """A chat client sends its own system prompt and its whole conversation with every
    question: the history took its full share of the context after the instructions and left
    no room for a passage, so the answer (max_tokens 10) ended with "citations": [].

    llm serves the model with a 1k context here (as the `haven up` test does), so that a
    prompt filling it is quick to read on a CPU."""
    llm = library.stack.llm
    served = llm.env
    llm.env = {**served, "HAVEN_LLM_CTX": "1024"}
    llm.stop()
    llm.start(timeout=300)
    try:
        url = library.stack.env["HAVEN_LLM_URL"]

        def tokens(text: str) -> tuple[int, int]:
            body = httpx.post(f"{url}/tokenize", json={"texts": [text]}, timeout=60).json()
            return int(body["counts"][0]), int(body["context_length"])

        sentence = "Answer politely, briefly and in the language of the question. "
        per_ten, context = tokens(sentence * 10)
        question = "hotel cap Zurich?"
        # Instructions filling the context but for the history's share (a quarter), the
        # answer and a few dozen tokens; short turns filling the history's share.
        wanted = context - context // 4 - 130 - tokens(RAG_INSTRUCTIONS + question)[0]
        system = sentence * (wanted * 10 // per_ten)
        turn = "We talked about travel and leave rules before. " * 2
        history: list[Any] = [
            {"role": role, "content": turn} for _ in range(20) for role in ("user", "assistant")
        ]
        messages = [
            {"role": "system", "content": system},
            *history,
            {"role": "user", "content": question},
        ]
        for _ in range(2):  # generated, then from the cache
            chunks = list(
                library.client.chat.completions.create(
                    model="haven-rag", messages=messages, max_tokens=10, stream=True
                )
            )
            citations = (chunks[-1].model_extra or {})["citations"]
            assert citations, "the streamed answer came without its sources"
            assert library.document_ids[TRAVEL] in {c["document_id"] for c in citations}
    finally:
        llm.env = served
        llm.stop()
        llm.start(timeout=300)
