"""Micro-batching: concurrent requests for one model merged into model calls.

One batcher per model, on the event loop. Requests are cut into slices of at most
``max_batch_size`` texts and queued; a loop takes as many slices as fit in one batch, waiting
at most ``max_wait`` after the oldest slice arrived for more to come, and hands it to a model
replica (``emb.replica``) from a thread that waits for the answer. While the model runs, the
next batch gathers, so a busy service dispatches full batches without waiting at all. Each
replica has its own such loop, all taking batches from the one queue.

The queue is bounded in texts. A request that does not fit is refused at once
(``QueueFull``) rather than waiting: the caller can retry elsewhere or later, and latency
stays bounded for the requests that were accepted.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from emb.encoder import Encoded
from emb.metrics import EmbMetrics


class QueueFull(Exception):
    pass


@dataclass
class _Slice:
    texts: list[str]
    future: asyncio.Future[Encoded]
    arrived: float = field(default_factory=time.monotonic)


class MicroBatcher:
    def __init__(
        self,
        alias: str,
        replicas: Sequence[Callable[[list[str]], Encoded]],
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        metrics: EmbMetrics,
    ) -> None:
        if not replicas:
            raise ValueError(f"{alias}: a batcher needs at least one model replica")
        self.alias = alias
        self._replicas = list(replicas)
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._metrics = metrics
        self._pending: deque[_Slice] = deque()
        self._queued = 0  # texts in _pending
        self._wakeup = asyncio.Event()
        # Replicas take turns putting a batch together, so two never split one between them.
        self._gathering = asyncio.Lock()
        # One thread per replica, waiting for its answers: a replica takes one batch at a time.
        self._executors = [
            ThreadPoolExecutor(1, thread_name_prefix=f"emb-{alias}-{i}")
            for i in range(len(self._replicas))
        ]
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def queued(self) -> int:
        return self._queued

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(encode, executor), name=f"emb-batcher-{self.alias}-{i}")
            for i, (encode, executor) in enumerate(
                zip(self._replicas, self._executors, strict=True)
            )
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for pending in self._pending:
            if not pending.future.done():
                pending.future.set_exception(QueueFull(f"{self.alias} is shutting down"))
        self._pending.clear()
        for executor in self._executors:
            executor.shutdown(wait=True)

    async def embed(self, texts: list[str]) -> Encoded:
        if self._queued + len(texts) > self.max_queue:
            self._metrics.rejections.labels(self.alias).inc()
            raise QueueFull(f"{self.alias}: {self._queued} texts already waiting")
        loop = asyncio.get_running_loop()
        slices = [
            _Slice(texts[i : i + self.max_batch_size], loop.create_future())
            for i in range(0, len(texts), self.max_batch_size)
        ]
        self._pending.extend(slices)
        self._set_queued(self._queued + len(texts))
        self._wakeup.set()
        parts = await asyncio.gather(*(s.future for s in slices))
        if len(parts) == 1:
            return parts[0]
        return Encoded(
            np.concatenate([p.vectors for p in parts]),
            [n for p in parts for n in p.tokens],
            [t for p in parts for t in p.truncated],
        )

    async def _run(
        self, encode: Callable[[list[str]], Encoded], executor: ThreadPoolExecutor
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            async with self._gathering:
                batch = await self._next_batch()
            texts = [text for s in batch for text in s.texts]
            started = time.perf_counter()
            try:
                result = await loop.run_in_executor(executor, encode, texts)
            except Exception as exc:  # the callers get the error; the batcher carries on
                for s in batch:
                    if not s.future.done():
                        s.future.set_exception(exc)
                continue
            self._metrics.batch_seconds.labels(self.alias).observe(time.perf_counter() - started)
            self._metrics.batch_size.labels(self.alias).observe(len(texts))
            offset = 0
            for s in batch:
                if not s.future.done():  # the caller may have gone away meanwhile
                    s.future.set_result(result.slice(offset, offset + len(s.texts)))
                offset += len(s.texts)

    async def _next_batch(self) -> list[_Slice]:
        while not self._pending:
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = self._pending[0].arrived + self.max_wait_s
        while self._queued < self.max_batch_size and (remaining := deadline - time.monotonic()) > 0:
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        batch: list[_Slice] = []
        size = 0
        while self._pending and size + len(self._pending[0].texts) <= self.max_batch_size:
            s = self._pending.popleft()
            self._set_queued(self._queued - len(s.texts))
            if s.future.done():  # cancelled while waiting: nothing to compute
                continue
            batch.append(s)
            size += len(s.texts)
        if not batch:
            return await self._next_batch()
        return batch

    def _set_queued(self, value: int) -> None:
        self._queued = value
        self._metrics.queue_depth.labels(self.alias).set(value)
