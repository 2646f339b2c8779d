"""Budgets, rate limits, stream caps and fair llm use, through two real API processes in front
of the llm service on the tiny GGUF (which never ends an answer by itself: an answer has as
many tokens as it asks for)."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from haven.db.engine import transaction
from haven.db.tables import BudgetReservation, Role, Tenant, TokenBudgetPeriod, UsageEntry
from tests.fixtures.api import Account, create_user
from tests.fixtures.quota_stack import (
    QuotaStack,
    new_chat,
    quota_stack,
    sse_lines,
    stream_body,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(
    database_url: str, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[QuotaStack]:
    with quota_stack(database_url, s3_endpoint, tmp_path_factory.mktemp("quotas")) as stack:
        yield stack


def budget_row(stack: QuotaStack, tenant_id: uuid.UUID) -> tuple[int, int, int | None]:
    with transaction(stack.session_factory) as session:
        limit = session.get_one(Tenant, tenant_id).token_budget
        row = session.execute(
            select(
                func.coalesce(func.sum(TokenBudgetPeriod.used), 0),
                func.coalesce(func.sum(TokenBudgetPeriod.reserved), 0),
            ).where(TokenBudgetPeriod.tenant_id == tenant_id)
        ).one()
        return int(row[0]), int(row[1]), limit


def ledger(stack: QuotaStack, tenant_id: uuid.UUID) -> list[UsageEntry]:
    with transaction(stack.session_factory) as session:
        rows = session.execute(select(UsageEntry).where(UsageEntry.tenant_id == tenant_id))
        entries = list(rows.scalars())
        session.expunge_all()
        return entries


def open_reservations(stack: QuotaStack, tenant_id: uuid.UUID) -> int:
    with transaction(stack.session_factory) as session:
        return int(
            session.execute(
                select(func.count())
                .select_from(BudgetReservation)
                .where(BudgetReservation.tenant_id == tenant_id)
            ).scalar_one()
        )


class BudgetWatch:
    """Reads the tenant's budget row every few milliseconds, keeping every moment at which
    settled plus held tokens were over the budget."""

    def __init__(self, stack: QuotaStack, tenant_id: uuid.UUID) -> None:
        self.stack, self.tenant_id = stack, tenant_id
        self.seen_over: list[tuple[int, int, int | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            used, reserved, limit = budget_row(self.stack, self.tenant_id)
            if limit is not None and used + reserved > limit:
                self.seen_over.append((used, reserved, limit))
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


@dataclass
class Outcome:
    request_id: str
    route: str
    status: int | None = None
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    completed: bool = False
    cancelled: bool = False
    broken: bool = False


def ask(
    stack: QuotaStack,
    api: int,
    who: Account,
    chat_id: str,
    max_tokens: int,
    cancel: bool,
    route: str,
    streaming: threading.Event | None = None,
) -> Outcome:
    """One answer, streamed; ``cancel`` hangs up after the first token."""
    outcome = Outcome(uuid.uuid4().hex, route)
    headers = {**who.headers, "X-Request-ID": outcome.request_id}
    question = f"question {outcome.request_id}"
    if route == "chat":
        url, body = f"/api/v1/chats/{chat_id}/messages", stream_body(question, max_tokens)
    else:
        url = "/v1/chat/completions"
        body = {
            "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens,
            "stream": True,
            "rag": False,
            "seed": 1,
        }
    try:
        with (
            stack.client(api) as client,
            client.stream("POST", url, json=body, headers=headers) as response,
        ):
            outcome.status = response.status_code
            outcome.headers = dict(response.headers)
            if response.status_code != 200:
                outcome.body = response.read() and response.json()
                return outcome
            for name, data in sse_lines(response):
                outcome.events.append(name)
                if streaming is not None:
                    streaming.set()
                token = name == "token" or (
                    route == "openai"
                    and any((c.get("delta") or {}).get("content") for c in data.get("choices", []))
                )
                if cancel and token:
                    outcome.cancelled = True
                    return outcome
                if name == "done" or (route == "openai" and data.get("usage")):
                    outcome.completed = True
    except httpx.HTTPError:
        outcome.broken = True  # its API process was killed
    return outcome


def test_parallel_answers_never_spend_past_the_budget(stack: QuotaStack) -> None:
    """64 answers at once per round, random lengths, some cancelled mid-stream, one API
    process killed mid-round: the tokens recorded never pass the budget, nothing accepted is
    left unsettled after the sweep, and every refusal is a 429 before any stream."""
    rng = random.Random(1717)
    watchers: list[BudgetWatch] = []
    try:
        run_rounds(stack, rng, watchers, rounds=3)
    finally:
        for watcher in watchers:
            watcher.stop()


def run_rounds(
    stack: QuotaStack, rng: random.Random, watchers: list[BudgetWatch], rounds: int
) -> None:
    for round_ in range(rounds):
        # Room for about a quarter of the round's answers (a prompt is ~40-60 tokens here).
        owner = stack.tenant(token_budget=16 * 60)
        with stack.client() as client:
            chat_id = new_chat(client, owner)
        watcher = BudgetWatch(stack, owner.tenant_id)
        watchers.append(watcher)
        kill = round_ == rounds - 1  # the last round, so the restart overlaps the checks
        streaming_on_second = threading.Event() if kill else None
        with ThreadPoolExecutor(max_workers=64) as pool:
            futures = [
                pool.submit(
                    ask,
                    stack,
                    i % 2,
                    owner,
                    chat_id,
                    rng.randint(1, 16),
                    rng.random() < 0.15,
                    "chat" if i % 3 else "openai",
                    streaming_on_second if i % 2 else None,
                )
                for i in range(64)
            ]
            if kill:
                # Kill the second API process while its answers stream or wait for llm.
                wait_until(streaming_on_second.is_set, "an answer streaming from the second API")
                stack.apis[1].kill9()
            outcomes = [f.result() for f in futures]
        restart = threading.Thread(target=stack.apis[1].start)
        if kill:
            restart.start()
        try:
            check_round(stack, owner.tenant_id, watcher, outcomes, kill)
        finally:
            if kill:
                restart.join()  # the next test needs both API processes, whatever happened


def check_round(
    stack: QuotaStack,
    tenant_id: uuid.UUID,
    watcher: BudgetWatch,
    outcomes: list[Outcome],
    kill: bool,
) -> None:
    # The sweep (any live API process's keeper) releases what the killed one held.
    wait_until(
        lambda: budget_row(stack, tenant_id)[1] == 0,
        "every reservation settled or swept",
    )
    watcher.stop()
    assert watcher.seen_over == []
    used, reserved, limit = budget_row(stack, tenant_id)
    assert limit is not None and used <= limit and reserved == 0
    assert open_reservations(stack, tenant_id) == 0
    entries = ledger(stack, tenant_id)
    assert sum(e.prompt_tokens + e.completion_tokens for e in entries) == used
    by_request = {e.request_id: e for e in entries}
    refused = [o for o in outcomes if o.status == 429]
    accepted = [o for o in outcomes if o.status == 200]
    assert refused and accepted
    assert len(refused) + len(accepted) + sum(o.broken and o.status is None for o in outcomes) == 64
    for o in refused:
        assert o.events == []
        assert int(o.headers["retry-after"]) >= 1
        reason = o.body.get("reason") or o.body.get("error", {}).get("reason")
        assert reason == "budget", o.body
    for o in accepted:
        if o.completed:
            entry = by_request[o.request_id]
            assert entry.error is None and entry.completion_tokens > 0
        elif o.cancelled and o.request_id in by_request:
            # Settled to what was generated: part of it, or all when the answer had
            # already ended by the time the API noticed the hang-up.
            assert by_request[o.request_id].error in (None, "interrupted")
    if kill:
        assert any(o.broken for o in outcomes)


def test_over_the_stream_cap_exactly_one_is_refused_and_a_hang_up_frees_a_place(
    stack: QuotaStack,
) -> None:
    owner = stack.tenant()
    with stack.client() as client:
        user = create_user(client, owner, Role.EDITOR)
    cap = 3
    stack.set_limits(owner.tenant_id, caller_streams=cap)
    with stack.client() as client:
        chat_id = new_chat(client, user)
    started = threading.Barrier(cap + 2)  # every stream's thread and this one
    release = threading.Event()
    statuses: list[int] = []
    lock = threading.Lock()

    def hold(api: int) -> None:
        with (
            stack.client(api) as client,
            client.stream(
                "POST",
                f"/api/v1/chats/{chat_id}/messages",
                json=stream_body("hold the line", 4000),
                headers=user.headers,
            ) as response,
        ):
            with lock:
                statuses.append(response.status_code)
            if response.status_code == 200:
                started.wait()
                release.wait(60)  # hang up without reading to the end
            else:
                started.wait()

    threads = [threading.Thread(target=hold, args=(i % 2,)) for i in range(cap + 1)]
    for thread in threads:
        thread.start()
    started.wait()
    assert sorted(statuses) == [200] * cap + [429]
    # One client hangs up; a new stream is accepted within the lease.
    release.set()
    for thread in threads:
        thread.join()

    def accepted() -> bool:
        with (
            stack.client() as client,
            client.stream(
                "POST",
                f"/api/v1/chats/{chat_id}/messages",
                json=stream_body("again", 2),
                headers=user.headers,
            ) as response,
        ):
            if response.status_code == 429:
                assert response.read() and response.json()["reason"] == "streams"
                return False
            return response.status_code == 200

    wait_until(accepted, "a stream accepted after the hang-up", timeout=10)


def llm_counts(stack: QuotaStack) -> tuple[int, int]:
    """(requests in llm now, waiting or generating; generations llm has finished)."""
    info = stack.llm_info()
    metrics = httpx.get(f"{stack.llm_url}/metrics", timeout=10).text
    finished = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("haven_llm_generations_total")
    )
    return int(info["waiting"]) + int(info["active_slots"]), int(finished)


def test_one_tenants_burst_does_not_hold_back_another_tenants_answer(stack: QuotaStack) -> None:
    """Tenant A asks 50 long answers at once; once they all wait in llm's queue, B asks one:
    between B's request joining llm's queue and B's answer starting to generate, at most one
    of A's answers finishes (first come, first served, B would wait for all of them). Read
    from llm itself: under load the clients see events late, the service's counts are exact."""
    a, b = stack.tenant(), stack.tenant()
    with stack.client() as client:
        chat_a, chat_b = new_chat(client, a), new_chat(client, b)
    stop = threading.Event()
    _, finished_before = llm_counts(stack)

    def ask_a(i: int) -> None:
        with (
            stack.client(i % 2) as client,
            client.stream(
                "POST",
                f"/api/v1/chats/{chat_a}/messages",
                json=stream_body(f"a{i}", 3000),
                headers=a.headers,
            ) as response,
        ):
            assert response.status_code == 200
            for _ in response.iter_lines():  # heartbeats come while it waits
                if stop.is_set():
                    return

    def seen() -> int:
        in_llm, finished = llm_counts(stack)
        return in_llm + finished - finished_before

    def ask_b() -> None:
        with (
            stack.client() as client,
            client.stream(
                "POST",
                f"/api/v1/chats/{chat_b}/messages",
                json=stream_body("b", 3000),
                headers=b.headers,
            ) as response,
        ):
            assert response.status_code == 200
            for _ in response.iter_lines():
                if stop.is_set():
                    return

    def b_generating() -> bool:
        tenants = stack.llm_info()["tenants"]
        return bool(tenants.get(str(b.tenant_id), {}).get("active"))

    with ThreadPoolExecutor(max_workers=52) as pool:
        futures = [pool.submit(ask_a, i) for i in range(50)]
        wait_until(lambda: seen() >= 50, "all of A's answers in llm", timeout=180)
        futures.append(pool.submit(ask_b))
        wait_until(lambda: seen() >= 51, "B's answer in llm's queue", timeout=60)
        _, finished_at_join = llm_counts(stack)
        wait_until(b_generating, "B's answer generating", timeout=120)
        _, finished_at_start = llm_counts(stack)
        stop.set()
        for future in futures:
            future.result()
    assert finished_at_start - finished_at_join <= 1


def test_a_burst_from_one_key_is_held_to_its_rate_while_another_tenant_is_served(
    stack: QuotaStack,
) -> None:
    noisy, quiet = stack.tenant(), stack.tenant()
    with stack.client() as client:
        key = client.post(
            "/api/v1/admin/api-keys", json={"name": "burst"}, headers=noisy.headers
        ).json()["api_key"]
    # Low enough that the burst outruns it even on a loaded machine.
    rate, burst = 2.0, 10
    stack.set_limits(noisy.tenant_id, caller_requests_per_second=rate, caller_burst=burst)
    statuses: list[int] = []
    quiet_statuses: list[int] = []
    headers = {"Authorization": f"Bearer {key}"}
    clients = [stack.client(i % 2) for i in range(16)]

    def hit(i: int) -> httpx.Response:
        return clients[i % 16].get("/api/v1/chats", headers=headers)

    def meanwhile() -> None:
        with stack.client(1) as client:
            for _ in range(20):
                quiet_statuses.append(
                    client.get("/api/v1/chats", headers=quiet.headers).status_code
                )

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=17) as pool:
        other = pool.submit(meanwhile)
        responses = list(pool.map(hit, range(1000)))
        elapsed = time.monotonic() - started
        other.result()
    for client in clients:
        client.close()
    statuses = [r.status_code for r in responses]
    allowed = statuses.count(200)
    assert set(statuses) <= {200, 429}
    # GCRA: the burst at once, then the rate; nothing more whichever process answered.
    assert burst <= allowed <= burst + rate * elapsed + 1
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["reason"] == "rate"
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert refused.headers["RateLimit-Limit"] == str(burst)
    ok = next(r for r in responses if r.status_code == 200)
    assert "RateLimit-Policy" in ok.headers
    assert quiet_statuses == [200] * 20


def test_usage_reports_a_scripted_workload_exactly(stack: QuotaStack, tmp_path: Path) -> None:
    owner = stack.tenant(token_budget=100_000)
    client = stack.client()
    alice = create_user(client, owner, Role.EDITOR)
    bob = create_user(client, owner, Role.VIEWER)
    key = client.post("/api/v1/admin/api-keys", json={"name": "app"}, headers=owner.headers).json()
    app = {"Authorization": f"Bearer {key['api_key']}"}
    usage: list[tuple[int, int]] = []

    def chat(who: Account, tokens: int) -> None:
        chat_id = new_chat(client, who)
        response = client.post(
            f"/api/v1/chats/{chat_id}/messages",
            json=stream_body(f"scripted {uuid.uuid4().hex}", tokens),
            headers={**who.headers, "Accept": "application/json"},
        )
        assert response.status_code == 200, response.text
        figures = response.json()["usage"]
        assert figures["completion_tokens"] == tokens
        usage.append((figures["prompt_tokens"], figures["completion_tokens"]))

    def openai(headers: dict[str, str], question: str, tokens: int) -> dict[str, Any]:
        response = client.post(
            "/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": question}],
                "max_tokens": tokens,
                "rag": False,
                "seed": 3,
            },
            headers=headers,
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    chat(alice, 5)
    chat(alice, 7)
    chat(bob, 3)
    first = openai(app, "the same question", 6)
    again = openai(app, "the same question", 6)  # from the answer cache: costs nothing
    assert again["citations"] == first["citations"]
    usage.append((first["usage"]["prompt_tokens"], first["usage"]["completion_tokens"]))

    report = client.get("/api/v1/usage", params={"period": "1h"}, headers=owner.headers)
    assert report.status_code == 200, report.text
    body = report.json()
    totals = body["totals"]
    assert totals["requests"] == 5
    assert totals["cached_answers"] == 1
    assert totals["prompt_tokens"] == sum(p for p, _ in usage)
    assert totals["completion_tokens"] == 5 + 7 + 3 + 6
    assert (totals["active_users"], totals["active_api_keys"]) == (2, 1)
    assert totals["errors"] == 0
    assert totals["latency"]["p50_ms"] is not None
    assert sum(b["requests"] for b in body["buckets"]) == 5
    assert body["bucket_seconds"] == 300
    per_caller = {
        (u["username"] or u["api_key_name"]): (u["requests"], u["completion_tokens"])
        for u in body["users"]
    }
    assert per_caller == {alice.username: (2, 12), bob.username: (1, 3), "app": (2, 6)}
    spent = sum(p + c for p, c in usage)
    assert body["budget"]["used"] == spent
    assert body["budget"]["left"] == 100_000 - spent

    # A platform admin reads the same figures for the tenant; another tenant's admin finds
    # no such tenant; a viewer may not read usage at all.
    as_admin = client.get(
        "/api/v1/usage",
        params={"period": "7d", "tenant_id": str(owner.tenant_id)},
        headers=stack.admin.headers,
    ).json()
    assert as_admin["totals"]["prompt_tokens"] == totals["prompt_tokens"]
    stranger = stack.tenant()
    assert (
        client.get(
            "/api/v1/usage",
            params={"tenant_id": str(owner.tenant_id)},
            headers=stranger.headers,
        ).status_code
        == 404
    )
    assert client.get("/api/v1/usage", headers=bob.headers).status_code == 403
    assert (
        client.get("/api/v1/usage", params={"period": "2d"}, headers=owner.headers).status_code
        == 422
    )
    client.close()


def test_over_budget_is_refused_before_anything_is_stored(stack: QuotaStack) -> None:
    owner = stack.tenant(token_budget=10)
    with stack.client() as client:
        chat_id = new_chat(client, owner)
        response = client.post(
            f"/api/v1/chats/{chat_id}/messages",
            json=stream_body("too big for the budget", 8),
            headers=owner.headers,
        )
        assert response.status_code == 429
        body = response.json()
        assert body["reason"] == "budget"
        assert (body["budget"], body["used"]) == (10, 0)
        assert body["resets_at"] and int(response.headers["Retry-After"]) >= 1
        messages = client.get(f"/api/v1/chats/{chat_id}/messages", headers=owner.headers)
        assert messages.json()["total"] == 0
        # The tenant admin reads the budget; the change by the platform admin is audited.
        read = client.get("/api/v1/budget", headers=owner.headers).json()
        assert (read["budget"], read["used"], read["left"]) == (10, 0, 10)
        audit = client.get("/api/v1/admin/audit", headers=owner.headers).json()
        assert any(e["action"] == "tenant.budget" for e in audit)
        assert (
            client.put(
                f"/api/v1/admin/tenants/{owner.tenant_id}/budget",
                json={"token_budget": 10**6},
                headers=owner.headers,
            ).status_code
            == 403
        )
