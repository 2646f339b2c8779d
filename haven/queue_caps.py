"""Queue caps: how many jobs of one workload may wait, per tenant and in total.

A new job past its tenant's share is refused with 429 (``LimitExceeded``, ``queue.tenant_full``);
past the platform's total with 503 (``Unavailable``, ``queue.full``); both with ``Retry-After``
and before anything of the request is stored (the caller checks before it writes). Waiting
means ``queued`` in PostgreSQL (a job backing off between attempts included), counted with a
partial index, so the check is a small range scan however many jobs have ended.

Two requests checked at the same moment may both pass, so a queue can end up a few jobs over
its cap (at most the number of uploads accepted at once): the cap bounds a flood, not a count.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from haven.db.tables import Job, JobKind, JobState
from haven.errors import LimitExceeded, Unavailable


class QueuedJobs:
    """Counts of waiting jobs (platform-wide: the caps and the metrics, no content)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def count(self, kind: JobKind, tenant_id: uuid.UUID | None = None) -> int:
        stmt = select(func.count()).where(Job.kind == kind, Job.state == JobState.QUEUED)
        if tenant_id is not None:
            stmt = stmt.where(Job.tenant_id == tenant_id)
        return int(self.session.execute(stmt).scalar_one())

    def tenant_and_total(self, kind: JobKind, tenant_id: uuid.UUID) -> tuple[int, int]:
        """Waiting ``kind`` jobs of ``tenant_id`` and of all tenants, in one query."""
        stmt = select(func.count().filter(Job.tenant_id == tenant_id), func.count()).where(
            Job.kind == kind, Job.state == JobState.QUEUED
        )
        mine, everyone = self.session.execute(stmt).one()
        return int(mine), int(everyone)

    def by_tenant(self) -> list[tuple[str, uuid.UUID, int]]:
        """(kind, tenant id, queued jobs) for every tenant with jobs waiting."""
        stmt = (
            select(Job.kind, Job.tenant_id, func.count())
            .where(Job.state == JobState.QUEUED)
            .group_by(Job.kind, Job.tenant_id)
        )
        return [(str(kind), tenant, int(n)) for kind, tenant, n in self.session.execute(stmt)]

    def by_state(self) -> list[tuple[str, str, int]]:
        """(kind, state, jobs) of the jobs not ended yet (queued, running)."""
        stmt = (
            select(Job.kind, Job.state, func.count())
            .where(Job.state.in_((JobState.QUEUED, JobState.RUNNING)))
            .group_by(Job.kind, Job.state)
        )
        return [(str(kind), str(state), int(n)) for kind, state, n in self.session.execute(stmt)]


def check_queue_cap(
    session: Session,
    tenant_id: uuid.UUID,
    kind: JobKind,
    *,
    per_tenant: Mapping[str, int],
    total: Mapping[str, int],
    retry_after: float,
) -> None:
    """Refuse one more ``kind`` job for ``tenant_id`` when its queue is at a cap. A kind
    with no cap configured is not limited."""
    tenant_cap = per_tenant.get(kind.value)
    total_cap = total.get(kind.value)
    if tenant_cap is None and total_cap is None:
        return
    # Both counts in one scan of the waiting jobs: this runs before every upload.
    tenant_waiting, all_waiting = QueuedJobs(session).tenant_and_total(kind, tenant_id)
    if tenant_cap is not None and tenant_waiting >= tenant_cap:
        raise LimitExceeded(
            f"{tenant_cap} {kind.value} jobs of your tenant are waiting already; "
            "try again once some have run",
            retry_after=retry_after,
            code="queue.tenant_full",
        )
    if total_cap is not None and all_waiting >= total_cap:
        raise Unavailable(
            f"the {kind.value} queue is full ({total_cap} jobs waiting); try again later",
            retry_after=retry_after,
            code="queue.full",
        )
