"""Tracing, stream metrics, logs and read-only mode on a whole Haven run as processes: emb,
llm (the tiny GGUF) and the all-in-one API + worker, all exporting their spans to an OTLP/HTTP
receiver this test runs, and writing their JSON logs to a rotated file."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from haven.db.engine import transaction
from haven.db.tables import Message
from tests.e2e.conftest import Stack
from tests.e2e.helpers import search, upload, wait_for, wait_job
from tests.fixtures.api import Account, bootstrap_platform_admin, create_tenant_with_admin
from tests.fixtures.otlp import OtlpReceiver, ReceivedSpan
from tests.fixtures.rag_stack import rag_stack
from tests.fixtures.services import free_port
from tests.fixtures.sse import Event, events_of
from tests.fixtures.tiny_gguf import build_tiny_gguf, publish_tiny_gguf

pytestmark = pytest.mark.slow

NOTE = (
    b"# Warehouse\n\nCopper wire is stored on pallets in aisle twelve of the north warehouse. "
    b"The forklift team moves the copper pallets every Tuesday morning.\n"
)
# Secrets of this run, each of which must never reach a log line.
JWT_SECRET = "jwt-" + secrets.token_hex(20)
S3_SECRET = "s3-" + secrets.token_hex(16)
DB_PASSWORD = "db-" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    found = OtlpReceiver(free_port()).start()
    yield found
    found.stop()


@pytest.fixture(scope="module")
def traced(
    receiver: OtlpReceiver,
    database_url: str,
    s3_endpoint: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("traced")
    gguf = build_tiny_gguf(tmp / "tiny-gguf")
    # PostgreSQL trusts loopback here, so any password connects: it only has to be configured.
    with_password = database_url.replace("postgres@", f"postgres:{DB_PASSWORD}@", 1)
    assert with_password != database_url
    with rag_stack(
        database_url,
        s3_endpoint,
        tmp,
        lambda registry: publish_tiny_gguf(registry, gguf, alias="chat"),
        HAVEN_OTEL_ENDPOINT=receiver.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="200",
        HAVEN_LOG_FILE=str(tmp / "logs" / "haven.log"),
        HAVEN_LOG_LEVEL="DEBUG",
        HAVEN_JWT_KEYS=json.dumps({"k1": JWT_SECRET}),
        HAVEN_S3_SECRET_KEY=S3_SECRET,
        HAVEN_DATABASE_URL=with_password,
        HAVEN_READ_ONLY_CACHE_SECONDS="0.5",
    ) as stack:
        stack.env["tmp"] = str(tmp)
        yield stack


@pytest.fixture(scope="module")
def owner(traced: Stack) -> Account:
    admin = bootstrap_platform_admin(traced.session_factory, traced.client)
    return create_tenant_with_admin(traced.client, admin)


@pytest.fixture(scope="module")
def platform_admin(traced: Stack) -> Account:
    return bootstrap_platform_admin(traced.session_factory, traced.client)


def _trace_with(receiver: OtlpReceiver, *wanted: Any) -> list[ReceivedSpan] | None:
    """The first trace that has a span matching each of ``wanted`` (callables)."""
    for spans in receiver.traces().values():
        if all(any(want(s) for s in spans) for want in wanted):
            return spans
    return None


def _named(service: str, pattern: str) -> Any:
    return lambda s: s.service == service and re.search(pattern, s.name) is not None


def _metric(stack: Stack, name: str, **labels: str) -> float | None:
    wanted = name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    for line in stack.client.get("/metrics").text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def _ask(stack: Stack, who: Account, chat_id: str, question: str) -> list[Event]:
    body = {"content": question, "max_tokens": 8, "seed": 7}
    with stack.client.stream(
        "POST", f"/api/v1/chats/{chat_id}/messages", json=body, headers=who.headers
    ) as response:
        assert response.status_code == 200, response.read()
        return [e for e in events_of(response) if e.name != "heartbeat"]


def test_one_trace_follows_an_upload_into_the_worker_and_a_question_through_emb_qdrant_llm(
    traced: Stack, owner: Account, receiver: OtlpReceiver
) -> None:
    body = upload(traced, owner, "warehouse.md", NOTE)
    wait_job(traced, owner, body["job_id"], {"ready"})
    # The request's span, the task message it sent, and the worker's run of it with the
    # ingest steps: one trace, carried through RabbitMQ in the message's headers.
    upload_steps = (
        _named("api", r"POST /api/v1/documents$"),
        lambda s: s.name == "run/ingest.document",
        lambda s: s.name == "ingest.extract",
        lambda s: s.name == "ingest.embed_index",
        _named("emb", r"POST /v1/embeddings|POST /embed"),
        lambda s: s.name == "qdrant.upsert",
    )
    wait_for(lambda: _trace_with(receiver, *upload_steps) is not None, 60, "the upload's trace")

    chat = traced.client.post("/api/v1/chats", json={}, headers=owner.headers).json()["id"]
    events = _ask(traced, owner, chat, "Where is the copper wire stored?")
    assert events[-1].name == "done"
    # API → emb (embedding the question) → the vector store → llm, in the question's trace,
    # with emb's and llm's own server spans (context crossed each process boundary).
    chat_steps = (
        _named("api", r"POST /api/v1/chats/\{chat_id\}/messages$"),
        lambda s: s.service == "emb" and s.parent_id != "",
        lambda s: s.name == "qdrant.search",
        lambda s: s.service == "llm" and "/v1/chat/completions" in s.name,
    )
    wait_for(lambda: _trace_with(receiver, *chat_steps) is not None, 60, "the question's trace")
    spans = _trace_with(receiver, *chat_steps)
    assert spans is not None
    assert {"api", "emb", "llm"} <= {s.service for s in spans}


def test_active_stream_gauge_goes_up_during_a_streamed_chat_and_back_down(
    traced: Stack, owner: Account
) -> None:
    route = "/api/v1/chats/{chat_id}/messages"
    chat = traced.client.post("/api/v1/chats", json={}, headers=owner.headers).json()["id"]
    before = _metric(traced, "haven_sse_streams_active", route=route) or 0.0
    body = {"content": "What does the forklift team move?", "max_tokens": 200, "seed": 3}
    with traced.client.stream(
        "POST", f"/api/v1/chats/{chat}/messages", json=body, headers=owner.headers
    ) as response:
        stream = events_of(response)
        assert next(stream).name == "meta"
        assert _metric(traced, "haven_sse_streams_active", route=route) == before + 1
        rest = [e.name for e in stream if e.name != "heartbeat"]
    assert rest[-1] == "done"
    wait_for(
        lambda: _metric(traced, "haven_sse_streams_active", route=route) == before,
        30,
        "the stream gauge to come back down",
    )
    assert (_metric(traced, "haven_tokens_generated_total", tenant=str(owner.tenant_id)) or 0) > 0
    assert _metric(traced, "haven_answer_cache_lookups_total", result="miss") is not None


def test_read_only_keeps_search_and_cached_answers_and_refuses_uploads(
    traced: Stack, owner: Account, platform_admin: Account
) -> None:
    uploaded = upload(traced, owner, "budget.md", b"# Budget\n\nThe review is in March.\n")
    wait_job(traced, owner, uploaded["job_id"], {"ready"})
    first_chat, chat = (
        traced.client.post("/api/v1/chats", json={}, headers=owner.headers).json()["id"]
        for _ in range(2)
    )
    question = "When is the budget review?"
    first = _ask(traced, owner, first_chat, question)
    assert first[-1].data["cached"] is False

    switched = traced.client.put(
        "/api/v1/admin/read-only",
        json={"on": True, "reason": "moving the object store"},
        headers=platform_admin.headers,
    )
    assert switched.status_code == 200, switched.text
    try:
        version = traced.client.get("/api/version").json()
        assert version["read_only"]["on"] is True
        assert version["read_only"]["reason"] == "moving the object store"
        refused = traced.client.post(
            "/api/v1/documents", files={"file": ("x.md", b"# new")}, headers=owner.headers
        )
        assert refused.status_code == 503 and refused.json()["code"] == "read_only"
        assert refused.json()["reason"] == "moving the object store"
        assert "Retry-After" in refused.headers
        assert search(traced, owner, "budget review March")
        # The same question in the other (empty) chat: the cached answer, given but not
        # added to the chat.
        again = _ask(traced, owner, chat, question)
        assert again[-1].name == "done" and again[-1].data["cached"] is True
        with transaction(traced.session_factory) as session:
            stored = session.execute(
                select(func.count()).select_from(Message).where(Message.chat_id == chat)
            ).scalar_one()
        assert stored == 0
    finally:
        off = traced.client.put(
            "/api/v1/admin/read-only", json={"on": False}, headers=platform_admin.headers
        )
        assert off.status_code == 200
    wait_for(
        lambda: (
            traced.client.post(
                "/api/v1/documents", files={"file": ("y.md", b"# after")}, headers=owner.headers
            ).status_code
            == 201
        ),
        30,
        "uploads to be accepted again",
    )


def _log_lines(tmp: Path) -> list[str]:
    lines = []
    for path in sorted(tmp.rglob("*.log*")):
        lines.extend(path.read_text(errors="replace").splitlines())
    return lines


def test_logs_carry_the_ids_and_never_a_secret(traced: Stack, owner: Account) -> None:
    body = upload(traced, owner, "ids.md", b"# Ids\n\nEvery line carries its ids.\n")
    wait_job(traced, owner, body["job_id"], {"ready"})
    tmp = Path(traced.env["tmp"])
    log_file = tmp / "logs" / "haven.log"
    wait_for(lambda: body["job_id"] in log_file.read_text(), 30, "the job's lines in the file")
    lines = _log_lines(tmp)
    assert len(lines) > 50
    for secret in (JWT_SECRET, S3_SECRET, DB_PASSWORD):
        leaked = [line for line in lines if secret in line]
        assert not leaked, leaked[:3]

    records = []
    for line in log_file.read_text().splitlines():
        records.append(json.loads(line))  # every line of the file is JSON
    requests = [r for r in records if r.get("event") == "http.request" and r.get("tenant_id")]
    assert requests and all(r.get("request_id") for r in requests)
    ready = [
        r for r in records if r.get("event") == "ingest.ready" and r.get("job_id") == body["job_id"]
    ]
    assert ready, "the worker's line for the job"
    line = ready[0]
    assert line["tenant_id"] == str(owner.tenant_id)
    assert line["doc_id"] == body["document"]["id"]
    assert line["request_id"]  # the upload's request, carried into the worker
    uploaded = [
        r for r in requests if r.get("route") == "/api/v1/documents" and r.get("method") == "POST"
    ]
    assert line["request_id"] in {r["request_id"] for r in uploaded}
    # The worker's job metrics (served on the all-in-one's /metrics).
    assert (_metric(traced, "haven_jobs_ended_total", kind="ingest", state="ready") or 0) >= 1
    assert (
        _metric(traced, "haven_job_duration_seconds_count", kind="ingest", state="ready") or 0
    ) >= 1
