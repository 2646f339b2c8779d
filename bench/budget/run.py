"""Benchmark: what token budgets, rate limits and the fair llm queue cost and give.

Three parts, in one run on one fresh database:

1. **reservation cost**: the accounting of one answer with the budget (``reserve`` before llm,
   ``settle`` after: two transactions, the conditional ``UPDATE ... RETURNING`` and the ledger
   row) against the same accounting without it (the ledger row alone, what Haven recorded
   before budgets), side by side: ``--concurrency`` threads, batches of each mode alternating
   so both see the same load, all on one tenant's budget row (the contended case). Reports
   p50/p99 ms per request and requests/s.
2. **rate limit under a burst**: two API processes in front of the tiny-GGUF llm; one API
   key sends ``--burst`` requests as fast as 16 threads can; meanwhile another tenant's user
   sends requests one after another. Reports how many of the burst passed against what the
   limit allows, and the other tenant's p50/p95 latency with and without the burst.
3. **fairness**: tenant A asks 50 answers at once, then tenant B asks one: how many of A's
   answers finish between B's question and B's first token, and B's time to first token.
   The same with B's llm request placed as if it were A's (what a first-come-first-served
   queue does), for comparison.

    .venv/bin/python -m bench.budget.run [--requests 2000] [--concurrency 16] [--no-record]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.common import machine, record
from haven.budget import TokenBudget
from haven.db.engine import make_engine, make_session_factory, transaction
from haven.db.tables import Tenant, UsageEntry
from haven.settings import StoreSettings
from tests.fixtures.quota_stack import QuotaStack, new_chat, quota_stack, sse_lines, stream_body
from tests.fixtures.services import drop_database, migrated_database, start_moto


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


# -- 1. reservation cost ---------------------------------------------------------------------


def reservation_cost(database_url: str, requests: int, concurrency: int) -> dict[str, tuple]:
    settings = StoreSettings(
        database_url=database_url,
        database_pool_size=concurrency + 2,
        database_max_overflow=0,
    )
    engine = make_engine(settings)
    factory = make_session_factory(engine)
    with transaction(factory) as session:
        tenant = Tenant(slug=f"bench-{uuid.uuid4().hex[:8]}", name="bench", token_budget=10**15)
        session.add(tenant)
        session.flush()
        tenant_id = tenant.id
    budget = TokenBudget(factory)
    rng = random.Random(5)
    # One tenant per thread: the same statements without waiting for each other's row lock.
    spread: list[uuid.UUID] = []
    with transaction(factory) as session:
        for _ in range(concurrency):
            other = Tenant(slug=f"bench-{uuid.uuid4().hex[:8]}", name="bench", token_budget=10**15)
            session.add(other)
            session.flush()
            spread.append(other.id)
    local = threading.local()
    handed = iter(range(10**9))
    handing = threading.Lock()

    def with_budget() -> None:
        held = budget.reserve(tenant_id, 600, kind="chat")
        budget.settle(held, prompt_tokens=rng.randint(50, 300), completion_tokens=200)

    def with_budget_spread() -> None:
        if not hasattr(local, "tenant"):
            with handing:
                local.tenant = spread[next(handed) % len(spread)]
        held = budget.reserve(local.tenant, 600, kind="chat")
        budget.settle(held, prompt_tokens=rng.randint(50, 300), completion_tokens=200)

    def without_budget() -> None:
        with transaction(factory) as session:
            session.add(
                UsageEntry(
                    tenant_id=tenant_id,
                    kind="chat",
                    prompt_tokens=rng.randint(50, 300),
                    completion_tokens=200,
                )
            )

    modes = {
        "with reservation, one tenant (one row for all 16 threads)": with_budget,
        "with reservation, a tenant per thread": with_budget_spread,
        "without (ledger row only)": without_budget,
    }
    latencies: dict[str, list[float]] = {name: [] for name in modes}
    busy: dict[str, float] = dict.fromkeys(modes, 0.0)

    def timed(fn) -> float:  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    batch = 200
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for fn in modes.values():  # warm up
            list(pool.map(lambda _, fn=fn: timed(fn), range(50)))
        done = 0
        while done < requests:
            for name, fn in modes.items():
                start = time.perf_counter()
                latencies[name] += list(pool.map(lambda _, fn=fn: timed(fn), range(batch)))
                busy[name] += time.perf_counter() - start
            done += batch
    engine.dispose()
    return {
        name: (
            pct(values, 0.5) * 1000,
            pct(values, 0.99) * 1000,
            len(values) / busy[name],
            len(values),
        )
        for name, values in latencies.items()
    }


# -- 2. burst ---------------------------------------------------------------------------------


def quiet_latencies(
    stack: QuotaStack, headers: dict[str, str], stop: threading.Event
) -> list[float]:
    values: list[float] = []
    with stack.client(1) as client:
        while not stop.is_set():
            start = time.perf_counter()
            response = client.get("/api/v1/chats", headers=headers)
            assert response.status_code == 200, response.text
            values.append(time.perf_counter() - start)
    return values


def burst(stack: QuotaStack, count: int) -> dict[str, object]:
    noisy, quiet = stack.tenant(), stack.tenant()
    with stack.client() as client:
        key = client.post(
            "/api/v1/admin/api-keys", json={"name": "burst"}, headers=noisy.headers
        ).json()["api_key"]
    rate, burst_size = 2.0, 10
    stack.set_limits(noisy.tenant_id, caller_requests_per_second=rate, caller_burst=burst_size)
    headers = {"Authorization": f"Bearer {key}"}

    stop = threading.Event()
    quiet_alone: list[float] = []
    thread = threading.Thread(
        target=lambda: quiet_alone.extend(quiet_latencies(stack, quiet.headers, stop))
    )
    thread.start()
    time.sleep(5)
    stop.set()
    thread.join()

    stop = threading.Event()
    quiet_during: list[float] = []
    thread = threading.Thread(
        target=lambda: quiet_during.extend(quiet_latencies(stack, quiet.headers, stop))
    )
    thread.start()
    clients = [stack.client(i % 2) for i in range(16)]
    started = time.monotonic()

    def hit(i: int) -> int:
        return clients[i % 16].get("/api/v1/chats", headers=headers).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(hit, range(count)))
    elapsed = time.monotonic() - started
    stop.set()
    thread.join()
    for client in clients:
        client.close()
    allowed = statuses.count(200)
    return {
        "count": count,
        "elapsed": elapsed,
        "allowed": allowed,
        "refused": statuses.count(429),
        "other": len(statuses) - allowed - statuses.count(429),
        "limit": burst_size + rate * elapsed,
        "rate": rate,
        "burst": burst_size,
        "alone": (pct(quiet_alone, 0.5) * 1000, pct(quiet_alone, 0.95) * 1000, len(quiet_alone)),
        "during": (
            pct(quiet_during, 0.5) * 1000,
            pct(quiet_during, 0.95) * 1000,
            len(quiet_during),
        ),
    }


# -- 3. fairness ------------------------------------------------------------------------------


def llm_counts(stack: QuotaStack) -> tuple[int, int]:
    """(requests in llm, waiting or generating; generations llm has finished)."""
    info = stack.llm_info()
    metrics = httpx.get(f"{stack.llm_url}/metrics", timeout=10).text
    finished = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("haven_llm_generations_total")
    )
    return int(info["waiting"]) + int(info["active_slots"]), int(finished)


def fairness(stack: QuotaStack, fifo: bool) -> tuple[int, float, float, int]:
    """(A's answers llm finished between B joining its queue and B's first token, B's time
    to first token s from joining, s per A answer, A's answers waiting when B joined)."""
    a, b = stack.tenant(), stack.tenant()
    with stack.client() as client:
        chat_a = new_chat(client, a)
    _, before = llm_counts(stack)
    stop = threading.Event()

    def ask_a(i: int) -> None:
        with (
            stack.client(i % 2, timeout=600) as client,
            client.stream(
                "POST",
                f"/api/v1/chats/{chat_a}/messages",
                json=stream_body(f"a{i}", 1000),
                headers=a.headers,
            ) as response,
        ):
            for _ in response.iter_lines():
                if stop.is_set():
                    return

    def seen() -> int:
        in_llm, finished = llm_counts(stack)
        return in_llm + finished - before

    first = threading.Event()

    def ask_b() -> None:
        # Straight to llm with B's tenant (fair) or as if it were A's (first come, first served).
        tenant = str(a.tenant_id if fifo else b.tenant_id)
        with (
            httpx.Client(base_url=stack.llm_url, timeout=600) as client,
            client.stream(
                "POST",
                "/v1/chat/completions",
                json={
                    "messages": [{"role": "user", "content": "b"}],
                    "max_tokens": 4,
                    "stream": True,
                },
                headers={"X-Haven-Tenant": tenant, "X-Haven-Priority": "interactive"},
            ) as response,
        ):
            for _, data in sse_lines(response):
                if any((c.get("delta") or {}).get("content") for c in data.get("choices", [])):
                    first.set()

    with ThreadPoolExecutor(max_workers=52) as pool:
        futures = [pool.submit(ask_a, i) for i in range(50)]
        deadline = time.monotonic() + 300
        while seen() < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        start_finished = llm_counts(stack)[1]
        futures.append(pool.submit(ask_b))
        while seen() < 51:
            time.sleep(0.01)
        joined = time.monotonic()
        waiting = int(stack.llm_info()["waiting"])
        _, at_join = llm_counts(stack)
        first.wait(600)
        ttft = time.monotonic() - joined
        _, at_first = llm_counts(stack)
        per_answer = (time.monotonic() - joined) / max(1, at_first - start_finished)
        stop.set()
        for future in futures:
            future.result()
    return at_first - at_join, ttft, per_answer, waiting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--cost-only", action="store_true", help="only the reservation cost")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="haven-bench-budget-"))
    moto = start_moto(work)
    s3 = next(moto)
    database_name = f"haven_bench_budget_{os.getpid()}"
    database_url = migrated_database(database_name)
    loads: list[str] = [load()]
    try:
        cost = reservation_cost(database_url, args.requests, args.concurrency)
        loads.append(load())
        if args.cost_only:
            print(f"load {' → '.join(loads)}")
            for name, (p50, p99, rps, n) in cost.items():
                print(f"| {name} | {p50:.2f} | {p99:.2f} | {rps:.0f} | {n} |")
            return
        with quota_stack(database_url, s3, work) as stack:
            burst_result = burst(stack, args.burst)
            loads.append(load())
            fair = fairness(stack, fifo=False)
            fifo = fairness(stack, fifo=True)
            loads.append(load())
    finally:
        drop_database(database_name)
        shutil.rmtree(work, ignore_errors=True)

    cost_rows = [
        f"| {name} | {p50:.2f} | {p99:.2f} | {rps:.0f} | {n} |"
        for name, (p50, p99, rps, n) in cost.items()
    ]
    b = burst_result
    alone, during = b["alone"], b["during"]
    report = "\n".join(
        [
            "## budget: reservation cost, a rate-limited burst, fair llm queue — "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            f"machine: {machine()}; load average (1/5/15 min) at the start and after each part:"
            f" {' → '.join(loads)} — shared with other sessions' tests, so absolute figures"
            " are loaded-machine figures; the side-by-side ratios are what to read",
            f"command: `.venv/bin/python -m bench.budget.run --requests {args.requests} "
            f"--concurrency {args.concurrency} --burst {args.burst}`",
            "",
            f"**Reservation cost** ({args.concurrency} threads, one tenant's budget row, "
            "batches of 200 alternating):",
            "",
            "| accounting per answer | p50 ms | p99 ms | requests/s | requests |",
            "|---|---|---|---|---|",
            *cost_rows,
            "",
            f"**Burst**: {b['count']} requests from one API key (limit {b['rate']:g}/s, burst "
            f"{b['burst']}) over {b['elapsed']:.1f} s through two API processes: {b['allowed']} "
            f"passed (the limit allows {b['limit']:.0f}), {b['refused']} got 429, "
            f"{b['other']} other. Another tenant's requests meanwhile: p50/p95 "
            f"{during[0]:.1f}/{during[1]:.1f} ms ({during[2]} requests, all 200) against "
            f"{alone[0]:.1f}/{alone[1]:.1f} ms without the burst ({alone[2]} requests).",
            "",
            "**Fairness** (tenant A: 50 answers of 1000 tokens at once through the API, one llm"
            " slot; once all wait in llm, tenant B: one answer straight to llm; counts from"
            " llm's own metrics):",
            "",
            "| B's place in llm's queue | A's answers waiting when B joined | A's answers llm "
            "finished between B joining and B's first token | B's time to first token s | "
            "s per A answer |",
            "|---|---|---|---|---|",
            f"| fair queue (its own tenant) | {fair[3]} | {fair[0]} | {fair[1]:.2f} | "
            f"{fair[2]:.2f} |",
            f"| first come, first served (as A's) | {fifo[3]} | {fifo[0]} | {fifo[1]:.2f} | "
            f"{fifo[2]:.2f} |",
            "",
        ]
    )
    record(report, save=not args.no_record)


if __name__ == "__main__":
    main()
