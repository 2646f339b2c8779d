"""Admission to the slots: a bounded number generating, a bounded number waiting, and a fair
queue in front of them.

Everything here runs on the event loop, so plain counters need no lock. A request that finds
every slot busy and the waiting room full is refused at once (HTTP 503 + Retry-After); one
that waits longer than its time limit is refused the same way.

Fairness (a fair queue, not fixed shares: with one or two slots on a CPU host, a share per
tenant would leave slots idle). Each request names its tenant and its priority (the API's
``X-Haven-Tenant`` and ``X-Haven-Priority`` headers; requests without them share one
anonymous tenant and are interactive). A freed slot goes to the waiting request that ranks
first by: interactive before batch (analyses and reviews), then the tenant holding the
fewest slots, then the tenant served longest ago, then arrival. So one tenant's burst cannot
keep every slot: another tenant's request takes the next slot that frees. A tenant with
nothing running or waiting may always wait, even when the waiting room is full of other
tenants' requests; that bounds the room at ``queue_limit`` plus one per tenant.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from llm.engine import Slot
from llm.metrics import LlmMetrics

RejectReason = Literal["queue_full", "queue_timeout"]
Priority = Literal["interactive", "batch"]
PRIORITY_RANK = {"interactive": 0, "batch": 1}
ANONYMOUS = ""


class Overloaded(Exception):
    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(eq=False)
class _Waiter:
    tenant: str
    rank: int
    seq: int
    future: asyncio.Future[Slot] = field(repr=False)


class SlotPool:
    def __init__(self, slots: Sequence[Slot], queue_limit: int, metrics: LlmMetrics) -> None:
        self.size = len(slots)
        self.queue_limit = queue_limit
        self._metrics = metrics
        self._free: list[Slot] = list(slots)
        self._waiters: list[_Waiter] = []
        self._holders: dict[int, str] = {}  # id(slot) -> tenant
        self._active: Counter[str] = Counter()
        self._last_served: dict[str, int] = {}
        self._seq = itertools.count()
        metrics.slots.set(self.size)
        self._publish()

    @property
    def active(self) -> int:
        return self.size - len(self._free)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def active_of(self, tenant: str) -> int:
        return self._active[tenant]

    def by_tenant(self) -> dict[str, dict[str, int]]:
        """Slots held and requests waiting, per tenant with either."""
        waiting: Counter[str] = Counter(w.tenant for w in self._waiters)
        tenants = {t for t, n in self._active.items() if n > 0} | set(waiting)
        return {t: {"active": self._active[t], "waiting": waiting[t]} for t in sorted(tenants)}

    async def acquire(
        self, wait_seconds: float, tenant: str = ANONYMOUS, priority: Priority = "interactive"
    ) -> Slot:
        # Newcomers queue behind those already waiting; the queue decides who is next.
        if not self._waiters and self._free:
            slot = self._free.pop()
            self._grant(slot, tenant)
            self._publish()
            return slot
        newcomer = self._active[tenant] == 0 and not any(w.tenant == tenant for w in self._waiters)
        if len(self._waiters) >= self.queue_limit and not newcomer:
            raise Overloaded(
                "queue_full",
                f"all {self.size} slots are busy and {len(self._waiters)} requests are waiting",
            )
        waiter = _Waiter(
            tenant,
            PRIORITY_RANK.get(priority, 0),
            next(self._seq),
            asyncio.get_running_loop().create_future(),
        )
        self._waiters.append(waiter)
        self._publish()
        try:
            return await asyncio.wait_for(asyncio.shield(waiter.future), max(wait_seconds, 0.0))
        except (TimeoutError, asyncio.CancelledError) as exc:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                waiter.future.cancel()
            elif waiter.future.done() and not waiter.future.cancelled():
                # The slot was handed over just as the wait ended: pass it on.
                self.release(waiter.future.result())
            self._publish()
            if isinstance(exc, TimeoutError):
                raise Overloaded(
                    "queue_timeout", f"no slot became free within {wait_seconds:.1f}s"
                ) from None
            raise

    def release(self, slot: Slot) -> None:
        """Give the slot back (only once its thread has finished with it): to the waiting
        request that ranks first, or to the free list."""
        tenant = self._holders.pop(id(slot), ANONYMOUS)
        if self._active[tenant] > 0:
            self._active[tenant] -= 1
        while self._waiters:
            waiter = min(self._waiters, key=self._rank)
            self._waiters.remove(waiter)
            if waiter.future.done():
                continue
            self._grant(slot, waiter.tenant)
            waiter.future.set_result(slot)
            self._publish()
            return
        self._free.append(slot)
        self._publish()

    def _rank(self, waiter: _Waiter) -> tuple[int, int, int, int]:
        return (
            waiter.rank,
            self._active[waiter.tenant],
            self._last_served.get(waiter.tenant, -1),
            waiter.seq,
        )

    def _grant(self, slot: Slot, tenant: str) -> None:
        self._holders[id(slot)] = tenant
        self._active[tenant] += 1
        self._last_served[tenant] = next(self._seq)

    def _publish(self) -> None:
        self._metrics.queue_depth.set(len(self._waiters))
        self._metrics.active_slots.set(self.active)
