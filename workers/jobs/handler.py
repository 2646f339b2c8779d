"""What a pipeline gives the job runner: a handler for its job kind.

The runner (``workers.jobs.runner``) owns everything every job needs: the per-job lock, the
claim and its attempts cap, the lease and its keeper, progress, cancel, the step deadline,
retries with backoff, the dead-letter queue and the reaper. A handler owns only its
pipeline:

- ``begin`` claims the job and reads what it works on (the default claims with
  ``JobStore.claim``; ingest folds its reads into the claim's statement);
- ``run`` does the steps, calling ``beat`` at each boundary, and ends with ``finish`` in the
  transaction that writes its results, so a run that lost its job writes nothing;
- ``discard`` removes what a run wrote when the job ends canceled or failed;
- ``ended`` reflects a failed or canceled job on its subject (a document version);
- ``reason`` names the handler's own errors, and says which are permanent (not retried).
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy.orm import Session

from haven.db.engine import transaction
from haven.db.repositories import JobStore
from haven.db.tables import Job, JobKind, JobState
from haven.jobs import Reason
from workers.jobs.heartbeat import Heartbeat, JobCanceled, JobLost

if TYPE_CHECKING:
    from workers.runtime import WorkerRuntime


@dataclass(frozen=True)
class Claim:
    """A run's hold on its job: which attempt it is, and what the handler read at begin."""

    job_id: uuid.UUID
    tenant_id: uuid.UUID
    subject_id: uuid.UUID | None
    attempt: int  # 1 for the job's first run; the job's attempts while this run holds it
    max_attempts: int
    params: dict[str, Any] = field(default_factory=dict)
    subject: Any = None
    # The subject was deleted after the job was queued: nothing to do.
    gone: bool = False

    @classmethod
    def of(cls, job: Job, *, subject: Any = None, gone: bool = False) -> Claim:
        return cls(
            job_id=job.id,
            tenant_id=job.tenant_id,
            subject_id=job.subject_id,
            attempt=job.attempts,
            max_attempts=job.max_attempts,
            params=dict(job.params or {}),
            subject=subject,
            gone=gone,
        )


class JobHandler(ABC):
    kind: ClassVar[JobKind]
    # The progress a run reports goes from 0 to this.
    steps: ClassVar[int] = 1
    # What a job of this kind works on, for people ("the document was deleted").
    subject_label: ClassVar[str] = "subject"

    def begin(self, rt: WorkerRuntime, job_id: uuid.UUID) -> Claim | None:
        """Claim the job (one more attempt); None when it is not this run's to do (ended,
        canceled, unknown, or out of attempts). The caller holds the job's lock, so a job
        still ``running`` belongs to a worker that died: it is taken over."""
        with transaction(rt.session_factory) as session:
            job = JobStore(session).claim(job_id, takeover=True, steps=self.steps)
            return None if job is None else Claim.of(job)

    @abstractmethod
    def run(self, rt: WorkerRuntime, claim: Claim, beat: Heartbeat) -> None:
        """The steps; the last one commits the results with ``finish``."""

    def discard(self, rt: WorkerRuntime, claim: Claim) -> None:  # noqa: B027 - optional
        """Remove what runs of this job wrote (it ended canceled or failed)."""

    def ended(self, rt: WorkerRuntime, claim: Claim, state: JobState) -> None:  # noqa: B027
        """The job ended ``failed`` or ``canceled``: reflect it on its subject."""

    def reason(self, exc: Exception) -> Reason | None:
        """The reason for one of this pipeline's errors; None for the runner's default."""
        return None


def finish(session: Session, claim: Claim) -> None:
    """running → ready in the transaction that writes the run's results; raises
    ``JobCanceled`` or ``JobLost`` (and so rolls the results back) when the job is no longer
    this run's to finish."""
    ended = JobStore(session).finish_unless_canceled(claim.job_id, claim.attempt)
    if ended == "cancel":
        raise JobCanceled()
    if ended == "lost":
        raise JobLost()
