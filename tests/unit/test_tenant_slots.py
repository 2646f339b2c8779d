"""Fair shares of the extractor processes between tenants (``workers.ingest.pool.TenantSlots``):
one tenant's slow files never hold every slot, and a freed slot goes to the tenant holding
the fewest."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from workers.ingest.pool import ExtractorBusy, TenantSlots


def slots(size: int, reserved: int) -> TenantSlots:
    pool = TenantSlots(size, reserved)
    for n in range(size):
        pool.put(f"child-{n}")
    return pool


def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_one_tenant_cannot_take_the_slot_kept_for_the_others() -> None:
    pool = slots(2, reserved=1)
    pool.acquire("a")
    with pytest.raises(ExtractorBusy, match="busy"):
        pool.acquire("a", wait_seconds=0.05)
    # Another tenant, with nothing in flight, gets the kept slot at once.
    assert pool.acquire("b", wait_seconds=0) is not None
    assert pool.holding() == {"a": 1, "b": 1}


def test_without_a_reserve_one_tenant_may_take_every_slot() -> None:
    pool = slots(2, reserved=0)
    pool.acquire("a")
    pool.acquire("a", wait_seconds=0)
    assert pool.holding() == {"a": 2}


def test_a_pool_of_one_still_serves_a_tenant() -> None:
    pool = slots(1, reserved=1)
    item = pool.acquire("a", wait_seconds=0)
    pool.release("a", item)
    assert pool.acquire("a", wait_seconds=0) == item


def test_a_freed_slot_goes_to_the_tenant_holding_the_fewest() -> None:
    pool = slots(2, reserved=0)
    first = pool.acquire("a")
    pool.acquire("a")
    got: list[str] = []

    def wait(tenant: str) -> None:
        pool.acquire(tenant)
        got.append(tenant)

    a_waits = threading.Thread(target=wait, args=("a",))
    a_waits.start()
    eventually(lambda: pool.waiting() == 1, "a to wait")
    b_waits = threading.Thread(target=wait, args=("b",))
    b_waits.start()
    eventually(lambda: pool.waiting() == 2, "b to wait")
    # a asked first, but holds two: b, holding none, is served first.
    pool.release("a", first)
    b_waits.join(10)
    assert got == ["b"]
    pool.release("a", "child-x")
    a_waits.join(10)
    assert got == ["b", "a"]
    assert pool.holding() == {"a": 1, "b": 1}


def test_a_tenant_whose_slots_are_held_by_slow_files_is_backlogged() -> None:
    pool = slots(2, reserved=1)
    pool.acquire("a")
    assert not pool.backlogged("b", wait_seconds=0)  # holds nothing: never backlogged
    assert not pool.backlogged("a", wait_seconds=60)  # its file started just now
    assert pool.backlogged("a", wait_seconds=0)  # at its share, held for "long enough"
    pool.release("a", "child-0")
    assert not pool.backlogged("a", wait_seconds=0)
