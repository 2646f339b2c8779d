"""Analyses end to end: the API, a real worker process (``celery -A workers.main worker`` on
the ``analyze`` queue) and the generation service on the tiny GGUF (real llama.cpp, a small
context), on the test PostgreSQL, Redis, RabbitMQ and S3.

A PDF ten times longer than the model's context goes through several map steps and reduces;
the worker is SIGKILLed halfway through the map and a new one finishes the job, redoing only
the call that was in flight; the same request again makes no llm call; a cancel stops the job
within the call it interrupts; an ``extract`` whose answers never validate retries each part
once and then marks it failed in the artifact; a busy generation service (503) delays the job
without failing it. llm calls are counted by the service's own metrics (every generation it
started, however it ended).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from haven.db.engine import transaction
from haven.db.tables import AnalysisStep, UsageEntry
from haven.queueing import create_celery
from haven.settings import StoreSettings
from tests.fixtures.analyses import pdf_pages, upload_ready
from tests.fixtures.api import Account
from tests.fixtures.llm_service import Service, tiny_service
from tests.fixtures.processes import WorkerProcess, worker_env
from tests.fixtures.tiny_gguf import CORPUS, TinyModel, build_tiny_gguf

pytestmark = pytest.mark.slow

CONTEXT = 1024
QUEUE = "analyze"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return build_tiny_gguf(tmp_path_factory.mktemp("tiny-gguf"))


@pytest.fixture()
def llm(s3_endpoint: str, tmp_path: Path, tiny_model: TinyModel) -> Iterator[Service]:
    with tiny_service(
        s3_endpoint, tmp_path / "llm", tiny_model, llm_ctx=CONTEXT, llm_slots=1, llm_queue=1
    ) as service:
        yield service


class Workers:
    def __init__(self, env: dict[str, str], folder: Path, settings: StoreSettings) -> None:
        self.env = env
        self.folder = folder
        self.celery = create_celery(settings)
        self.running: list[WorkerProcess] = []

    def consumers(self) -> int:
        with self.celery.connection_for_read() as conn:
            return int(conn.default_channel.queue_declare(QUEUE, passive=True).consumer_count)

    def start(self, name: str) -> WorkerProcess:
        worker = WorkerProcess(name, self.env, self.folder / f"{name}.log", QUEUE)
        with contextlib.suppress(Exception):
            before = self.consumers()
        self.running.append(worker.start(locals().get("before", 0), self.consumers))
        return worker

    def logs(self) -> str:
        return "\n".join(f"--- {w.name}\n{w.tail(60)}" for w in self.running)


@pytest.fixture()
def workers(
    store_overrides: dict[str, Any], store_settings: StoreSettings, tmp_path: Path, llm: Service
) -> Iterator[Workers]:
    env = {
        **worker_env(store_overrides, tmp_path),
        "HAVEN_LLM_URL": llm.url,
        "HAVEN_ANALYZE_MAP_TOKENS": "48",
        "HAVEN_ANALYZE_REDUCE_TOKENS": "64",
        "HAVEN_JOB_LEASE_SECONDS": "2",
        "HAVEN_JOB_HEARTBEAT_SECONDS": "0.2",
        "HAVEN_REAPER_INTERVAL_SECONDS": "1",
        "HAVEN_RETRY_BACKOFF_SECONDS": "0.2",
        "HAVEN_RETRY_BACKOFF_MAX_SECONDS": "0.5",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    pool = Workers(env, tmp_path, store_settings)
    with pool.celery.connection_for_write() as conn, contextlib.suppress(Exception):
        conn.default_channel.queue_purge(QUEUE)
    try:
        yield pool
    finally:
        for worker in pool.running:
            worker.stop()


def generations(llm: Service) -> int:
    """Every generation the service started, however it ended."""
    text = httpx.get(f"{llm.url}/metrics", timeout=5).text
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("haven_llm_generations_total{")
        )
    )


def wait_for(check: Callable[[], bool], timeout: float, what: str, workers: Workers) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}\n{workers.logs()}")


def analysis(client: TestClient, who: Account, analysis_id: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/analyses/{analysis_id}", headers=who.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_state(
    client: TestClient, who: Account, analysis_id: str, states: set[str], workers: Workers
) -> dict[str, Any]:
    wait_for(
        lambda: analysis(client, who, analysis_id)["state"] in states,
        120,
        f"analysis {analysis_id} to reach {states}",
        workers,
    )
    return analysis(client, who, analysis_id)


def stored_steps(factory: sessionmaker[Session], tenant: Account, step: str) -> int:
    with transaction(factory) as session:
        return int(
            session.execute(
                select(func.count()).where(
                    AnalysisStep.tenant_id == tenant.tenant_id, AnalysisStep.step == step
                )
            ).scalar_one()
        )


def ledger(factory: sessionmaker[Session], tenant: Account) -> tuple[int, int]:
    with transaction(factory) as session:
        calls, tokens = session.execute(
            select(func.count(), func.coalesce(func.sum(UsageEntry.completion_tokens), 0)).where(
                UsageEntry.tenant_id == tenant.tenant_id, UsageEntry.kind == "analyze"
            )
        ).one()
        return int(calls), int(tokens)


def long_pdf(pages: int) -> bytes:
    """Pages of the tiny model's own sentences (few tokens each), numbered."""
    return pdf_pages(
        [
            f"Page {n}. " + " ".join(CORPUS[(n + i) % len(CORPUS)] for i in range(7))
            for n in range(1, pages + 1)
        ]
    )


PAGES = 36


def test_analyses_on_real_workers(
    api_client: TestClient,
    session_factory: sessionmaker[Session],
    tenant_a: Account,
    tenant_b: Account,
    workers: Workers,
    llm: Service,
) -> None:
    """One worker is killed; the next one serves every scenario after that (a worker takes
    a while to start on a busy machine)."""
    doc = _survives_a_kill_and_is_reused(
        api_client, session_factory, tenant_a, tenant_b, workers, llm
    )
    _cancel_stops_within_one_call(api_client, session_factory, tenant_a, workers, llm, doc)
    _extract_retries_then_marks_failed_and_waits_out_a_busy_llm(
        api_client, session_factory, tenant_a, workers, llm
    )


def _survives_a_kill_and_is_reused(
    api_client: TestClient,
    session_factory: sessionmaker[Session],
    tenant_a: Account,
    tenant_b: Account,
    workers: Workers,
    llm: Service,
) -> str:
    content = long_pdf(PAGES)
    doc = upload_ready(
        api_client, session_factory, tenant_a, content, "report.pdf", "application/pdf"
    )["document"]["id"]
    worker = workers.start("doomed")
    before = generations(llm)
    body = {"document_ids": [doc], "kind": "summary", "instructions": "Summarise the report."}
    created = api_client.post("/api/v1/analyses", json=body, headers=tenant_a.headers)
    assert created.status_code == 201, created.text
    analysis_id = created.json()["id"]

    # Halfway through the map, the worker dies as the OOM killer would kill it.
    wait_for(
        lambda: (
            analysis(api_client, tenant_a, analysis_id)["progress"].startswith("map ")
            and analysis(api_client, tenant_a, analysis_id)["job"]["progress_total"] > 1
        ),
        120,
        "the map to start",
        workers,
    )
    parts = analysis(api_client, tenant_a, analysis_id)["job"]["progress_total"]
    assert parts >= 10, f"a document 10x the context is cut into {parts} parts"
    wait_for(
        lambda: stored_steps(session_factory, tenant_a, "map") >= parts // 2,
        120,
        "half the map steps",
        workers,
    )
    worker.kill9()
    done_at_kill = stored_steps(session_factory, tenant_a, "map")
    assert done_at_kill < parts, "the worker was killed before the map ended"

    workers.start("survivor")
    ready = wait_state(api_client, tenant_a, analysis_id, {"ready", "failed"}, workers)
    assert ready["state"] == "ready", ready
    result = ready["result"]
    reduces = stored_steps(session_factory, tenant_a, "reduce")
    assert result["parts"] == parts and reduces >= 1
    assert result["steps"] == parts + reduces
    # Only the call in flight at the kill is made twice.
    calls = generations(llm) - before
    assert calls <= parts + reduces + 1, (calls, parts, reduces)
    assert ledger(session_factory, tenant_a)[0] >= parts + reduces
    assert ready["model"]["context_length"] == CONTEXT
    citations = result["citations"]
    assert len(citations) == parts
    assert citations[0]["pages"][0] == 1 and citations[-1]["pages"][1] == PAGES

    # The artifact: its tenant downloads it through a short-lived link; no one else can.
    link = api_client.get(f"/api/v1/analyses/{analysis_id}/artifact", headers=tenant_a.headers)
    assert link.status_code == 200, link.text
    markdown = httpx.get(link.json()["url"], timeout=10)
    assert markdown.status_code == 200
    text = markdown.text
    assert "## Sources cited" in text and "report.pdf (version 1, pp. 1-" in text
    assert ready["model"]["sha256"] in text
    for path in (f"/api/v1/analyses/{analysis_id}/artifact", f"/api/v1/analyses/{analysis_id}"):
        assert api_client.get(path, headers=tenant_b.headers).status_code == 404
    unsigned = link.json()["url"].split("?")[0]
    assert httpx.get(unsigned, timeout=10).status_code == 403

    # The same request again: the stored analysis, no llm call.
    settled = generations(llm)
    again = api_client.post("/api/v1/analyses", json=body, headers=tenant_a.headers)
    assert again.status_code == 200 and again.json()["id"] == analysis_id
    # Deleted and asked again: a new analysis, whose every step is stored already.
    assert (
        api_client.delete(f"/api/v1/analyses/{analysis_id}", headers=tenant_a.headers).status_code
        == 204
    )
    fresh = api_client.post("/api/v1/analyses", json=body, headers=tenant_a.headers)
    assert fresh.status_code == 201, fresh.text
    redone = wait_state(api_client, tenant_a, fresh.json()["id"], {"ready", "failed"}, workers)
    assert redone["state"] == "ready" and redone["llm_calls"] == 0
    assert redone["result"]["text"] == result["text"]
    assert generations(llm) == settled
    return str(doc)


def _cancel_stops_within_one_call(
    api_client: TestClient,
    session_factory: sessionmaker[Session],
    tenant_a: Account,
    workers: Workers,
    llm: Service,
    long_doc: str,
) -> None:
    """Cancel mid-map: the job stops within the call it interrupts."""
    stored = stored_steps(session_factory, tenant_a, "map")
    body = {"document_ids": [long_doc], "kind": "custom", "instructions": "List the names."}
    created = api_client.post("/api/v1/analyses", json=body, headers=tenant_a.headers).json()
    wait_for(
        lambda: stored_steps(session_factory, tenant_a, "map") >= stored + 2,
        120,
        "two map steps",
        workers,
    )
    canceled = api_client.post(f"/api/v1/analyses/{created['id']}/cancel", headers=tenant_a.headers)
    assert canceled.status_code == 200, canceled.text
    at_cancel = generations(llm)
    ended = wait_state(
        api_client, tenant_a, created["id"], {"canceled", "ready", "failed"}, workers
    )
    assert ended["state"] == "canceled" and ended["progress"] == "canceled"
    time.sleep(1)  # anything the worker would still send has reached the service by now
    assert generations(llm) - at_cancel <= 1


def _extract_retries_then_marks_failed_and_waits_out_a_busy_llm(
    api_client: TestClient,
    session_factory: sessionmaker[Session],
    tenant_a: Account,
    workers: Workers,
    llm: Service,
) -> None:
    short_doc = upload_ready(
        api_client, session_factory, tenant_a, " ".join(CORPUS[:3]).encode(), "short.txt"
    )["document"]["id"]
    # Extract on a text that fits: one call, then one retry told why the answer was not
    # valid; the part is marked failed in the artifact, never dropped. The service is busy
    # (its one slot and its queue taken) when the job starts: it waits, it does not fail.
    schema = {
        "type": "object",
        "properties": {"names": {"type": "array", "items": {"type": "string"}}},
        "required": ["names"],
    }
    hold = threading.Event()
    holders = [threading.Thread(target=_occupy, args=(llm, hold)) for _ in range(2)]
    for thread in holders:
        thread.start()
    wait_for(lambda: llm.metric("haven_llm_queue_depth") >= 1, 30, "the llm queue full", workers)
    before = ledger(session_factory, tenant_a)[0]
    extract = api_client.post(
        "/api/v1/analyses",
        json={"document_ids": [short_doc], "kind": "extract", "output": schema},
        headers=tenant_a.headers,
    ).json()
    wait_for(
        lambda: "analyze.llm_busy" in workers.running[-1].log_path.read_text(),
        60,
        "the analysis to be refused by the busy service",
        workers,
    )
    hold.set()
    for thread in holders:
        thread.join(timeout=60)
    done = wait_state(api_client, tenant_a, extract["id"], {"ready", "failed"}, workers)
    assert done["state"] == "ready", done
    assert done["result"]["parts"] == 1 and done["result"]["failed_parts"] == 1
    assert done["result"]["valid"] is False
    assert done["result"]["llm_waits"] >= 1
    assert ledger(session_factory, tenant_a)[0] - before == 2  # the answer and its retry

    link = api_client.get(
        f"/api/v1/analyses/{extract['id']}/artifact",
        params={"format": "json"},
        headers=tenant_a.headers,
    ).json()
    artifact = json.loads(httpx.get(link["url"], timeout=10).text)
    part = artifact["parts"][0]
    assert part["failed"] is True and part["error"]
    assert artifact["parameters"]["schema"] == schema
    assert artifact["sources"][0]["document_id"] == short_doc


def _occupy(llm: Service, release: threading.Event) -> None:
    """Long generations, one after another, holding a slot (or the queue's place) until
    ``release``."""
    body = {"messages": [{"role": "user", "content": "hold"}], "max_tokens": 900, "stream": True}
    while not release.is_set():
        with contextlib.suppress(httpx.HTTPError):
            url = f"{llm.url}/v1/chat/completions"
            with httpx.stream("POST", url, json=body, timeout=120) as response:
                for _ in response.iter_lines():
                    if release.is_set():
                        break
        time.sleep(0.02)
