"""llm's fair queue: who gets a freed slot."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry

from llm.engine import Slot
from llm.metrics import LlmMetrics
from llm.slots import Overloaded, SlotPool


class FakeSlot:
    def __init__(self, index: int) -> None:
        self.index = index


def pool(slots: int, queue: int) -> SlotPool:
    fakes = cast(list[Slot], [FakeSlot(i) for i in range(slots)])
    return SlotPool(fakes, queue, LlmMetrics(CollectorRegistry()))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_tenant_behind_anothers_burst_gets_the_next_free_slot() -> None:
    async def scenario() -> list[str]:
        slots = pool(1, 100)
        order: list[str] = []
        held = await slots.acquire(1, "a")

        async def wait(tenant: str) -> None:
            slot = await slots.acquire(10, tenant)
            order.append(tenant)
            await asyncio.sleep(0)
            slots.release(slot)

        tasks = [asyncio.ensure_future(wait("a")) for _ in range(10)]
        await settle()
        tasks.append(asyncio.ensure_future(wait("b")))
        await settle()
        slots.release(held)
        await asyncio.gather(*tasks)
        return order

    order = asyncio.run(scenario())
    assert order[0] == "b"
    assert order.count("a") == 10


def test_interactive_answers_go_before_batch_calls() -> None:
    async def scenario() -> list[str]:
        slots = pool(1, 100)
        order: list[str] = []
        held = await slots.acquire(1, "a")

        async def wait(name: str, tenant: str, priority: Any) -> None:
            slot = await slots.acquire(10, tenant, priority)
            order.append(name)
            slots.release(slot)

        tasks = [asyncio.ensure_future(wait(f"batch{i}", "a", "batch")) for i in range(3)]
        await settle()
        tasks.append(asyncio.ensure_future(wait("chat", "a", "interactive")))
        await settle()
        slots.release(held)
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(scenario())[0] == "chat"


def test_a_full_waiting_room_still_admits_a_tenant_with_nothing_waiting() -> None:
    async def scenario() -> None:
        slots = pool(1, 2)
        held = await slots.acquire(1, "a")
        waiting = [asyncio.ensure_future(slots.acquire(10, "a")) for _ in range(2)]
        await settle()
        with pytest.raises(Overloaded):
            await slots.acquire(10, "a")
        other = asyncio.ensure_future(slots.acquire(10, "b"))
        await settle()
        assert slots.waiting == 3
        slots.release(held)
        first = await other
        slots.release(first)
        for task in waiting:
            slots.release(await task)
        assert slots.active == 0 and slots.waiting == 0

    asyncio.run(scenario())


def test_a_wait_that_times_out_leaves_the_pool_whole() -> None:
    async def scenario() -> None:
        slots = pool(1, 4)
        held = await slots.acquire(1, "a")
        with pytest.raises(Overloaded):
            await slots.acquire(0.01, "b")
        assert slots.waiting == 0
        slots.release(held)
        again = await slots.acquire(1, "b")
        assert slots.active == 1
        slots.release(again)

    asyncio.run(scenario())
