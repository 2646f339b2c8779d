"""One thread per worker process that keeps the leases of its running jobs alive and stops
the steps that run past their deadline.

A job's lease used to be renewed only at its step boundaries, so one long step (a big
extraction) let the lease lapse and the reaper handed the job to a second worker while the
first still ran it. The keeper renews every running job's lease on a clock of its own; a
step that is truly stuck is the one thing it does not keep alive: past its deadline the job
is taken from it (``on_overdue``), retried or failed with ``step.timeout``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from workers.jobs.heartbeat import Heartbeat

log = structlog.get_logger("haven.worker")


class LeaseKeeper:
    def __init__(self, tick_seconds: float) -> None:
        self.tick = tick_seconds
        self._beats: dict[int, tuple[Heartbeat, Callable[[Heartbeat], None]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, beat: Heartbeat, on_overdue: Callable[[Heartbeat], None]) -> None:
        """Renew ``beat`` until ``forget``; past its step's deadline, call ``on_overdue``
        (which takes the job from the run and ends with ``beat.expire()``)."""
        with self._lock:
            self._beats[id(beat)] = (beat, on_overdue)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="haven-lease-keeper", daemon=True
                )
                self._thread.start()

    def forget(self, beat: Heartbeat) -> None:
        with self._lock:
            self._beats.pop(id(beat), None)

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.tick):
            with self._lock:
                beats = list(self._beats.values())
            for beat, on_overdue in beats:
                now = time.monotonic()
                try:
                    if beat.overdue(now):
                        on_overdue(beat)
                    else:
                        beat.renew(now)
                except Exception:  # one job's trouble must not stop the others' leases
                    log.exception("job.keeper_failed", job_id=str(beat.job_id))
