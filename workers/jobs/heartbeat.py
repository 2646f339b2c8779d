"""A running job's heartbeat: its lease, its progress, its step deadline and whether it
should go on.

Two parties use it. The job's own thread calls it at every step boundary, which must be
cheap (a short document has a dozen boundaries and a busy worker runs many documents a
second): a cancel is looked up among those the process's ``CancelWatch`` has heard, and the
PostgreSQL heartbeat and the Redis lock are written only when due. The process's
``LeaseKeeper`` thread calls ``renew`` on its own schedule, so the lease stays alive while a
long step runs without reaching a boundary: a long but healthy step is never taken over.
What the keeper learns (a cancel, the job lost) is raised in the job's thread at its next
boundary. A step that runs past its deadline is the keeper's to stop (``overdue``).

Every database write names the run's attempt, so a run whose job was taken from it changes
nothing, and learns so at its next boundary.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from typing import Literal

import structlog
from redis.exceptions import LockNotOwnedError
from redis.lock import Lock
from sqlalchemy.orm import Session, sessionmaker

from haven.db.engine import transaction
from haven.db.repositories import JobStore
from workers.jobs.cancel_watch import CancelWatch

log = structlog.get_logger("haven.worker")


class JobCanceled(Exception):
    """The job was canceled while it ran."""


class JobLost(Exception):
    """The job is no longer this run's (its step ran over its deadline, or the reaper
    requeued it); what the run still does is not recorded."""


class JobDeferred(Exception):
    """The run gives its job back before doing anything lasting, because what it needs is
    busy with other jobs of the same tenant (e.g. the extractors, held by that tenant's slow
    files). The job goes back to the queue without spending the attempt, and the job thread
    is free for another tenant's job."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class Heartbeat:
    def __init__(
        self,
        job_id: uuid.UUID,
        attempt: int,
        *,
        lock: Lock,
        cancels: CancelWatch,
        session_factory: sessionmaker[Session],
        interval_seconds: float,
        lease_seconds: float,
        step_deadline_seconds: float | None = None,
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.lock = lock
        self.cancels = cancels
        self.session_factory = session_factory
        self.interval = interval_seconds
        self.lease = lease_seconds
        self.default_deadline = step_deadline_seconds
        now = time.monotonic()
        self._written = now  # the claim wrote the first heartbeat
        self._extended = now  # the lock was just acquired
        self._progress: dict[str, int] = {}
        # The job's thread and the keeper both write; one at a time.
        self._guard = threading.Lock()
        self._heard: Literal["cancel", "lost"] | None = None  # what the keeper learnt
        self.expired = False  # the keeper took the job from this run (step deadline)
        self.step = 0
        self.step_started = now
        self.step_deadline = step_deadline_seconds

    def __call__(
        self,
        *,
        done: int | None = None,
        total: int | None = None,
        deadline: float | None = None,
    ) -> None:
        """A step boundary: record progress and start the next step (``deadline`` seconds
        for it, else the default); raise ``JobCanceled`` or ``JobLost`` if the job should
        stop."""
        if self.expired or self._heard == "lost":
            raise JobLost()
        if done is not None:
            self._progress["done"] = done
        if total is not None:
            self._progress["total"] = total
        now = time.monotonic()
        self.step += 1
        self.step_started = now
        self.step_deadline = deadline if deadline is not None else self.default_deadline
        if now - self._extended >= self.lease / 3:
            with self._guard:
                self._extend_lease(now)
        if self._heard == "cancel" or self.cancels.canceled(self.job_id):
            raise JobCanceled()
        if now - self._written >= self.interval:
            self.write()

    def write(self) -> None:
        """The database heartbeat, now."""
        outcome = self._write()
        if outcome == "cancel":
            raise JobCanceled()
        if outcome == "lost":
            raise JobLost()

    def _write(self) -> Literal["running", "cancel", "lost"]:
        with self._guard:
            with transaction(self.session_factory) as session:
                outcome = JobStore(session).beat(self.job_id, self.attempt, **self._progress)
            self._written = time.monotonic()
        return outcome

    def _extend_lease(self, now: float) -> None:
        try:
            self.lock.extend(self.lease, replace_ttl=True)
        except LockNotOwnedError:
            # The lease ran out (the keeper could not reach Redis); take it back unless
            # another run has it.
            if not self.lock.acquire():
                self._heard = "lost"
                raise JobLost() from None
        self._extended = now

    def renew(self, now: float) -> None:
        """The keeper's turn: keep the lease and the database heartbeat alive while the
        job's thread is inside a step. Never raises: what it learns waits for the job's
        next boundary, and a failed write is tried again at the next turn."""
        if self.expired or self._heard == "lost":
            return
        try:
            if now - self._extended >= self.lease / 3:
                with self._guard:
                    self._extend_lease(now)
            if now - self._written >= self.interval:
                outcome = self._write()
                if outcome != "running":
                    self._heard = outcome
        except JobLost:
            pass
        except Exception as exc:  # Redis or PostgreSQL away for a moment
            log.warning("job.renew_failed", job_id=str(self.job_id), error=type(exc).__name__)

    def overdue(self, now: float) -> bool:
        """The current step has run past its deadline."""
        return (
            not self.expired
            and self.step_deadline is not None
            and now - self.step_started > self.step_deadline
        )

    def expire(self) -> None:
        """The keeper took the job from this run: stop renewing, free the lock for the
        next attempt, and stop the run at its next boundary."""
        with self._guard:
            self.expired = True
            # Already expired, perhaps: the next attempt can take it anyway.
            with contextlib.suppress(Exception):
                self.lock.release()
