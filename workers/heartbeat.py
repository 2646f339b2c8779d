"""A running job's heartbeat: its lease, its progress and whether it should go on.

Called at every step boundary, it must be cheap: an ingest of a short document has a dozen
boundaries and a busy worker runs many documents a second. So a call costs no round trip
unless something is due: a cancel is looked up among those the process's ``CancelWatch``
has heard; the PostgreSQL heartbeat (progress, the reaper's ``heartbeat_at``, and the
authoritative cancel flag) is written at most every ``job_heartbeat_seconds``, and the Redis
lock is extended once a third of its lease is gone. A cancel whose message was missed
(Redis restarted) is still seen at the next database heartbeat, and always before a version
is activated.
"""

from __future__ import annotations

import time
import uuid

from redis.exceptions import LockNotOwnedError
from redis.lock import Lock
from sqlalchemy.orm import Session, sessionmaker

from haven.db.engine import transaction
from haven.jobs import JobStore
from workers.cancel_watch import CancelWatch


class JobCanceled(Exception):
    """The job was canceled while it ran."""


class JobLost(Exception):
    """The job is no longer this run's (the reaper requeued it after missed heartbeats)."""


class Heartbeat:
    def __init__(
        self,
        job_id: uuid.UUID,
        *,
        lock: Lock,
        cancels: CancelWatch,
        session_factory: sessionmaker[Session],
        interval_seconds: float,
        lease_seconds: float,
    ) -> None:
        self.job_id = job_id
        self.lock = lock
        self.cancels = cancels
        self.session_factory = session_factory
        self.interval = interval_seconds
        self.lease = lease_seconds
        now = time.monotonic()
        self._written = now  # the claim wrote the first heartbeat
        self._extended = now  # the lock was just acquired
        self._progress: dict[str, int] = {}

    def __call__(self, *, done: int | None = None, total: int | None = None) -> None:
        """Record progress; raise ``JobCanceled`` or ``JobLost`` if the job should stop."""
        if done is not None:
            self._progress["done"] = done
        if total is not None:
            self._progress["total"] = total
        now = time.monotonic()
        if now - self._extended >= self.lease / 3:
            self._extend_lease()
            self._extended = now
        if self.cancels.canceled(self.job_id):
            raise JobCanceled()
        if now - self._written >= self.interval:
            self.write()

    def write(self) -> None:
        """The database heartbeat, now."""
        with transaction(self.session_factory) as session:
            outcome = JobStore(session).beat(self.job_id, **self._progress)
        self._written = time.monotonic()
        if outcome == "cancel":
            raise JobCanceled()
        if outcome == "lost":
            raise JobLost()

    def _extend_lease(self) -> None:
        try:
            self.lock.extend(self.lease, replace_ttl=True)
        except LockNotOwnedError:
            # The lease ran out (a long step); take it back unless another run has it.
            if not self.lock.acquire():
                raise JobLost() from None
