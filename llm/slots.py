"""Admission to the slots: a bounded number generating, a bounded number waiting.

Everything here runs on the event loop, so plain counters need no lock. A request that finds
every slot busy and the waiting room full is refused at once (HTTP 503 + Retry-After); one
that waits longer than its time limit is refused the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Literal

from llm.engine import Slot
from llm.metrics import LlmMetrics

RejectReason = Literal["queue_full", "queue_timeout"]


class Overloaded(Exception):
    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SlotPool:
    def __init__(self, slots: Sequence[Slot], queue_limit: int, metrics: LlmMetrics) -> None:
        self.size = len(slots)
        self.queue_limit = queue_limit
        self._metrics = metrics
        self._free: asyncio.Queue[Slot] = asyncio.Queue()
        for slot in slots:
            self._free.put_nowait(slot)
        self._waiting = 0
        metrics.slots.set(self.size)
        self._publish()

    @property
    def active(self) -> int:
        return self.size - self._free.qsize()

    @property
    def waiting(self) -> int:
        return self._waiting

    async def acquire(self, wait_seconds: float) -> Slot:
        # Newcomers queue behind those already waiting, so a freed slot goes to the oldest.
        if self._waiting == 0 and not self._free.empty():
            slot = self._free.get_nowait()
            self._publish()
            return slot
        if self._waiting >= self.queue_limit:
            raise Overloaded(
                "queue_full",
                f"all {self.size} slots are busy and {self._waiting} requests are waiting",
            )
        self._waiting += 1
        self._publish()
        try:
            slot = await asyncio.wait_for(self._free.get(), timeout=max(wait_seconds, 0.0))
        except TimeoutError:
            raise Overloaded(
                "queue_timeout", f"no slot became free within {wait_seconds:.1f}s"
            ) from None
        finally:
            self._waiting -= 1
            self._publish()
        return slot

    def release(self, slot: Slot) -> None:
        """Give the slot back; only once its thread has finished with it."""
        self._free.put_nowait(slot)
        self._publish()

    def _publish(self) -> None:
        self._metrics.queue_depth.set(self._waiting)
        self._metrics.active_slots.set(self.active)
