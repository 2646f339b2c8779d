"""One state machine for every job: ``queued → running → ready | failed | canceled``.

The transitions themselves are SQL, in ``haven.db.repositories`` (``JobStore`` for the
workers, ``JobRepository`` for tenants); this module holds what producers and workers share
about them: the machine, the cancel signal and the reason codes a failed job carries.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import redis

from haven.db.repositories import JobStore, claim_statement, job_params
from haven.db.tables import JobState

__all__ = [
    "CANCEL_CHANNEL",
    "TERMINAL",
    "TRANSITIONS",
    "JobStore",
    "Reason",
    "claim_statement",
    "job_params",
    "signal_cancel",
]

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


@dataclass(frozen=True)
class Reason:
    """Why a job failed or is being retried: a stable ``code`` for programs and alerts
    (``extract.timeout``, ``emb.unavailable``, ``step.timeout``, ``worker.lost``,
    ``internal``) and a short ``message`` for people. Never an exception's text: that goes
    to the log, with the job id and the request id."""

    code: str
    message: str
    # True when running the job again cannot help (the document itself is the problem).
    permanent: bool = False


# Reasons the runner itself gives; pipelines add their own (``workers.<pipeline>``).
STEP_TIMEOUT = "step.timeout"
WORKER_LOST = "worker.lost"
SUBJECT_GONE = "subject.gone"
INTERNAL = "internal"
