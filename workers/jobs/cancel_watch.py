"""The cancels a worker process has heard: one Redis subscriber thread per process fills a
bounded set that every running job looks at, in memory, at each step boundary.

Losing a message (Redis restarted, the subscriber reconnecting) only delays a cancel to the
job's next database heartbeat, where ``cancel_requested`` is read; the job can never end
``ready`` after a cancel, because its last transaction checks the flag.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from typing import Any

import redis
import structlog

from haven.jobs import CANCEL_CHANNEL

log = structlog.get_logger("haven.worker")

# Every worker hears every cancel, mostly of jobs it does not run; the oldest are dropped.
REMEMBERED = 10_000
RECONNECT_PAUSE_SECONDS = 1.0


class CancelWatch:
    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._heard: OrderedDict[uuid.UUID, None] = OrderedDict()
        self._lock = threading.Lock()
        self._thread: Any = None

    def start(self) -> None:
        """Subscribe (idempotent); returns once the subscription is in place."""
        with self._lock:
            if self._thread is not None:
                return
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            pubsub.subscribe(**{CANCEL_CHANNEL: self._on_message})
            self._thread = pubsub.run_in_thread(
                sleep_time=1.0, daemon=True, exception_handler=self._on_error
            )
            self._thread.name = "haven-cancel-watch"

    def stop(self) -> None:
        with self._lock:
            if self._thread is not None:
                self._thread.stop()
                self._thread = None

    def canceled(self, job_id: uuid.UUID) -> bool:
        return job_id in self._heard

    def forget(self, job_id: uuid.UUID) -> None:
        """A new run of the job starts: a cancel heard for an earlier run no longer applies."""
        with self._lock:
            self._heard.pop(job_id, None)

    def _on_message(self, message: dict[str, Any]) -> None:
        try:
            job_id = uuid.UUID(bytes(message["data"]).decode())
        except (TypeError, ValueError):
            return
        with self._lock:
            self._heard[job_id] = None
            while len(self._heard) > REMEMBERED:
                self._heard.popitem(last=False)

    def _on_error(self, exc: BaseException, pubsub: Any, thread: Any) -> None:
        # The next read reconnects and subscribes again; until then cancels wait for the
        # database heartbeat.
        log.warning("cancel_watch.disconnected", error=str(exc))
        time.sleep(RECONNECT_PAUSE_SECONDS)
