"""One state machine for every job: ``queued → running → ready | failed | canceled``.

Each transition is a single conditional UPDATE (``... WHERE state = <expected>``), so two
workers, a redelivered message and the reaper can race without ever moving a job twice.
The caller owns the transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import redis
from sqlalchemy import Update, bindparam, func, select, update
from sqlalchemy.orm import Session

from haven.db.tables import Job, JobState

TERMINAL = frozenset({JobState.READY, JobState.FAILED, JobState.CANCELED})
# Which state a job may move to from which (the whole machine, for readers and tests).
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELED, JobState.FAILED}),
    JobState.RUNNING: frozenset(
        {JobState.READY, JobState.FAILED, JobState.CANCELED, JobState.QUEUED}
    ),
    JobState.READY: frozenset(),
    JobState.FAILED: frozenset({JobState.QUEUED}),
    JobState.CANCELED: frozenset({JobState.QUEUED}),
}


# A cancel is also published on a Redis channel, which every worker process hears on one
# subscriber thread, so a running job learns of it at its next step boundary without any
# round trip. PostgreSQL's ``cancel_requested`` stays the truth: a cancel published while a
# worker was not listening is read at the job's next database heartbeat.
CANCEL_CHANNEL = "haven:jobs:cancel"


def signal_cancel(client: redis.Redis, job_id: uuid.UUID) -> None:
    """After the transaction that set ``cancel_requested`` committed."""
    client.publish(CANCEL_CHANNEL, str(job_id))


def _now() -> datetime:
    return datetime.now(UTC)


def claim_statement(*, takeover: bool, steps: int | None = None) -> Update:
    """The claim's UPDATE, without its RETURNING, for the parameters ``job_id`` and ``now``.

    Built once by its callers and executed with parameters: composing and caching a
    statement costs more CPU than running it. A worker may make it the first part of a
    larger statement (see ``workers.tasks.ingest.begin``)."""
    states = [JobState.QUEUED, JobState.RUNNING] if takeover else [JobState.QUEUED]
    now = bindparam("now", type_=Job.heartbeat_at.type)
    progress = {} if steps is None else {"progress_done": 0, "progress_total": steps}
    return (
        update(Job)
        .where(
            Job.id == bindparam("job_id"),
            Job.state.in_(states),
            Job.cancel_requested.is_(False),
        )
        .values(
            state=JobState.RUNNING,
            attempts=Job.attempts + 1,
            started_at=func.coalesce(Job.started_at, now),
            heartbeat_at=now,
            last_error=None,
            updated_at=now,
            **progress,
        )
    )


def job_params(job_id: uuid.UUID) -> dict[str, Any]:
    """The parameters of the prebuilt job statements (the claim and ``_FINISH``)."""
    return {"job_id": job_id, "now": _now()}


# running → ready unless a cancel was requested; returns the job's id when it moved.
_FINISH = (
    update(Job)
    .where(
        Job.id == bindparam("job_id"),
        Job.state == JobState.RUNNING,
        Job.cancel_requested.is_(False),
    )
    .values(
        state=JobState.READY,
        finished_at=bindparam("now", type_=Job.finished_at.type),
        progress_done=Job.progress_total,
        updated_at=func.now(),
    )
    .returning(Job.id)
    .execution_options(synchronize_session=False)
)


class JobStore:
    """Job transitions for workers and the reaper. Workers act for the job's tenant, which
    they read from the job row itself; nothing here returns tenant content."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, job_id: uuid.UUID) -> Job | None:
        return self.session.get(Job, job_id, populate_existing=True)

    def _move(self, job_id: uuid.UUID, expected: Sequence[JobState], **values: Any) -> bool:
        stmt = (
            update(Job)
            .where(Job.id == job_id, Job.state.in_(list(expected)))
            .values(updated_at=func.now(), **values)
            .execution_options(synchronize_session=False)
        )
        return bool(self.session.execute(stmt).rowcount)  # type: ignore[attr-defined]

    def claim(self, job_id: uuid.UUID, *, takeover: bool, steps: int | None = None) -> Job | None:
        """queued → running (or, with ``takeover``, keep a running job whose worker died).
        Returns the job when this caller now owns it. ``steps`` starts its progress."""
        stmt = claim_statement(takeover=takeover, steps=steps).returning(Job)
        return self.session.execute(
            stmt, job_params(job_id), execution_options={"populate_existing": True}
        ).scalar_one_or_none()

    def beat(
        self, job_id: uuid.UUID, *, done: int | None = None, total: int | None = None
    ) -> Literal["running", "cancel", "lost"]:
        """Heartbeat and progress of a running job, and whether it should go on, in one
        statement: ``cancel`` when a cancel was requested, ``lost`` when the job is no longer
        running (taken over, failed or canceled)."""
        values: dict[str, Any] = {"heartbeat_at": _now(), "updated_at": func.now()}
        if done is not None:
            values["progress_done"] = done
        if total is not None:
            values["progress_total"] = total
        stmt = (
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.RUNNING)
            .values(**values)
            .returning(Job.cancel_requested)
            .execution_options(synchronize_session=False)
        )
        cancel = self.session.execute(stmt).scalar_one_or_none()
        if cancel is None:
            return "lost"
        return "cancel" if cancel else "running"

    def cancel_requested(self, job_id: uuid.UUID) -> bool:
        stmt = select(Job.cancel_requested).where(Job.id == job_id)
        return bool(self.session.execute(stmt).scalar_one_or_none())

    def finish_unless_canceled(self, job_id: uuid.UUID) -> Literal["ready", "cancel", "lost"]:
        """running → ready, unless a cancel was requested (``cancel``) or the job is no longer
        running (``lost``). In the caller's transaction: it commits with the job's results."""
        finished = self.session.execute(_FINISH, job_params(job_id))
        if finished.scalar_one_or_none() is not None:
            return "ready"
        return "cancel" if self.cancel_requested(job_id) else "lost"

    def fail(self, job_id: uuid.UUID, error: str) -> bool:
        return self._move(
            job_id,
            [JobState.RUNNING, JobState.QUEUED],
            state=JobState.FAILED,
            last_error=error[:4000],
            finished_at=_now(),
        )

    def mark_canceled(self, job_id: uuid.UUID) -> bool:
        return self._move(
            job_id,
            [JobState.RUNNING, JobState.QUEUED],
            state=JobState.CANCELED,
            finished_at=_now(),
        )

    def back_to_queue(self, job_id: uuid.UUID, error: str) -> bool:
        """running → queued after a transient error (the retry is already scheduled)."""
        return self._move(
            job_id, [JobState.RUNNING], state=JobState.QUEUED, last_error=error[:4000]
        )

    def _stale(
        self, state: JobState, since: Any, older_than: timedelta, limit: int
    ) -> Sequence[Job]:
        stmt = (
            select(Job)
            .where(Job.state == state, since < _now() - older_than)
            .order_by(since)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return self.session.execute(stmt).scalars().all()

    def stale_running(self, older_than: timedelta, limit: int = 100) -> Sequence[Job]:
        """Jobs whose worker stopped sending heartbeats (it died)."""
        return self._stale(JobState.RUNNING, Job.heartbeat_at, older_than, limit)

    def count_stale_running(self, older_than: timedelta) -> int:
        stmt = select(func.count()).where(
            Job.state == JobState.RUNNING, Job.heartbeat_at < _now() - older_than
        )
        return int(self.session.execute(stmt).scalar_one())

    def stale_queued(self, older_than: timedelta, limit: int = 100) -> Sequence[Job]:
        """Queued jobs nobody picked up (their message was lost); safe to send again."""
        return self._stale(JobState.QUEUED, Job.updated_at, older_than, limit)

    def touch(self, job_id: uuid.UUID) -> None:
        self.session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(updated_at=_now())
            .execution_options(synchronize_session=False)
        )
