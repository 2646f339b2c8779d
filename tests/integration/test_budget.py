"""Token budgets on the real PostgreSQL: reservations that never overspend under concurrency,
settlement to the real usage, the sweep of dead holders' reservations."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from haven.budget import BudgetExceeded, TokenBudget
from haven.db.engine import make_engine, make_session_factory, transaction
from haven.db.tables import BudgetReservation, Tenant, TokenBudgetPeriod, UsageEntry
from haven.settings import StoreSettings


@pytest.fixture()
def engine(store_settings: StoreSettings) -> Iterator[Engine]:
    settings = store_settings.model_copy(
        update={"database_pool_size": 40, "database_max_overflow": 40}
    )
    engine = make_engine(settings)
    yield engine
    engine.dispose()


@pytest.fixture()
def factory(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


def new_tenant(factory: sessionmaker[Session], budget: int | None) -> uuid.UUID:
    with transaction(factory) as session:
        tenant = Tenant(slug=f"b-{uuid.uuid4().hex[:12]}", name="budget", token_budget=budget)
        session.add(tenant)
        session.flush()
        return tenant.id


def ledger_tokens(factory: sessionmaker[Session], tenant_id: uuid.UUID) -> int:
    with transaction(factory) as session:
        total = session.execute(
            select(
                func.coalesce(func.sum(UsageEntry.prompt_tokens + UsageEntry.completion_tokens), 0)
            ).where(UsageEntry.tenant_id == tenant_id)
        ).scalar_one()
        return int(total)


def open_reservations(factory: sessionmaker[Session], tenant_id: uuid.UUID) -> int:
    with transaction(factory) as session:
        return int(
            session.execute(
                select(func.count())
                .select_from(BudgetReservation)
                .where(BudgetReservation.tenant_id == tenant_id)
            ).scalar_one()
        )


def test_a_call_that_does_not_fit_is_refused_with_the_budget_and_its_reset(
    factory: sessionmaker[Session],
) -> None:
    tenant_id = new_tenant(factory, 100)
    budget = TokenBudget(factory)
    held = budget.reserve(tenant_id, 60, kind="chat")
    with pytest.raises(BudgetExceeded) as refused:
        budget.reserve(tenant_id, 41, kind="chat")
    details = refused.value.details
    assert details["reason"] == "budget"
    assert (details["budget"], details["used"], details["reserved"]) == (100, 0, 60)
    assert refused.value.retry_after is not None and refused.value.retry_after >= 1
    assert details["resets_at"] == budget.period()[1].isoformat()

    # Settled to the real usage: what was reserved but not generated comes back.
    assert budget.settle(held, prompt_tokens=20, completion_tokens=15) == 35
    state = budget.state(tenant_id)
    assert (state.used, state.reserved, state.left) == (35, 0, 65)
    assert budget.reserve(tenant_id, 65, kind="chat").tokens == 65
    assert ledger_tokens(factory, tenant_id) == 35


def test_usage_over_the_reservation_is_never_charged_past_it(
    factory: sessionmaker[Session],
) -> None:
    tenant_id = new_tenant(factory, 50)
    budget = TokenBudget(factory)
    held = budget.reserve(tenant_id, 50, kind="chat")
    assert budget.settle(held, prompt_tokens=40, completion_tokens=30) == 50
    assert budget.state(tenant_id).used == 50


def test_an_unlimited_tenant_is_still_counted(factory: sessionmaker[Session]) -> None:
    tenant_id = new_tenant(factory, None)
    budget = TokenBudget(factory)
    held = budget.reserve(tenant_id, 10**9, kind="chat")
    budget.settle(held, prompt_tokens=7, completion_tokens=3)
    state = budget.state(tenant_id)
    assert (state.limit, state.used, state.reserved, state.left) == (None, 10, 0, None)


def test_the_sweep_releases_only_what_dead_holders_left(factory: sessionmaker[Session]) -> None:
    tenant_id = new_tenant(factory, 1000)
    dead = TokenBudget(factory, lease_seconds=0.2, holder="dead-process")
    alive = TokenBudget(factory, lease_seconds=0.2, holder="live-process")
    dead.reserve(tenant_id, 300, kind="chat")
    kept = alive.reserve(tenant_id, 200, kind="chat")
    time.sleep(0.3)
    alive.renew()  # the live process keeps its lease; the dead one cannot
    assert alive.sweep() >= 1
    state = alive.state(tenant_id)
    assert (state.used, state.reserved) == (0, 200)
    alive.settle(kept, prompt_tokens=100, completion_tokens=50)
    assert open_reservations(factory, tenant_id) == 0
    assert alive.state(tenant_id).used == 150


def test_settling_after_the_sweep_charges_only_what_still_fits(
    factory: sessionmaker[Session],
) -> None:
    tenant_id = new_tenant(factory, 100)
    stalled = TokenBudget(factory, lease_seconds=0.1, holder="stalled")
    other = TokenBudget(factory, holder="other")
    held = stalled.reserve(tenant_id, 80, kind="chat")
    time.sleep(0.2)
    other.sweep()
    other.reserve(tenant_id, 70, kind="chat")  # the freed tokens went to someone else
    assert stalled.settle(held, prompt_tokens=50, completion_tokens=10) == 30
    state = other.state(tenant_id)
    assert state.used + state.reserved == 100


def _reserve_and_settle(
    budget: TokenBudget, tenant_id: uuid.UUID, rng: random.Random, start: threading.Barrier
) -> str:
    tokens = rng.randint(1, 40)
    start.wait()
    try:
        held = budget.reserve(tenant_id, tokens, kind="chat")
    except BudgetExceeded:
        return "refused"
    if budget.holder == "dead":
        return "abandoned"  # its process died: only the sweep gives these tokens back
    fate = rng.random()
    if fate < 0.15:
        budget.release(held)  # llm refused before generating
        return "released"
    used = tokens if fate > 0.5 else rng.randint(0, tokens)  # finished, or cut short
    budget.settle(held, prompt_tokens=used // 2, completion_tokens=used - used // 2)
    return "settled"


@pytest.mark.slow
def test_parallel_reservations_never_spend_past_the_budget(
    factory: sessionmaker[Session],
) -> None:
    """64 callers at once, many rounds, random sizes, some abandoned by a dead holder:
    at no moment do settled plus held tokens pass the budget, and nothing stays held."""
    rng = random.Random(17)
    tenant_id = new_tenant(factory, 0)
    live = TokenBudget(factory, lease_seconds=0.5, holder="live")
    dead = TokenBudget(factory, lease_seconds=0.5, holder="dead")
    seen_over: list[tuple[int, int, int]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            with transaction(factory) as session:
                row = session.execute(
                    select(TokenBudgetPeriod.used, TokenBudgetPeriod.reserved, Tenant.token_budget)
                    .join(Tenant, Tenant.id == TokenBudgetPeriod.tenant_id)
                    .where(TokenBudgetPeriod.tenant_id == tenant_id)
                ).first()
            if row is not None and row[2] is not None and row[0] + row[1] > row[2]:
                seen_over.append((row[0], row[1], row[2]))
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    limit = 0
    outcomes: dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=64) as pool:
        for _ in range(8):
            # Each round grants a little more budget than 64 callers together could fit.
            limit += 600
            with transaction(factory) as session:
                session.get_one(Tenant, tenant_id).token_budget = limit
            start = threading.Barrier(64)
            futures = [
                pool.submit(
                    _reserve_and_settle,
                    dead if i % 16 == 0 else live,
                    tenant_id,
                    random.Random(rng.random()),
                    start,
                )
                for i in range(64)
            ]
            for future in futures:
                outcome = future.result()
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
            live.maintain()  # sweeps the dead holder's reservations once their lease is out
    stop.set()
    watcher.join()
    time.sleep(0.6)
    live.sweep()

    assert outcomes.get("refused", 0) > 0 and outcomes.get("settled", 0) > 0
    assert outcomes.get("abandoned", 0) > 0
    assert seen_over == []
    state = live.state(tenant_id)
    assert state.used <= limit
    assert state.reserved == 0
    assert open_reservations(factory, tenant_id) == 0
    assert ledger_tokens(factory, tenant_id) == state.used
