"""The probe: a job whose one step only waits, so an operator (or a test) can watch the
runner claim, renew, finish, retry and dead-letter a job on real workers without touching
any tenant's data. ``params``: ``seconds`` to wait (at most an hour), ``step_deadline`` to
override the worker's step deadline, ``defer`` to give the job back unstarted (as a pipeline
does when what it needs is busy with its tenant's other jobs) on its first N runs, each
recorded as ``deferred:N``. Each run's start (``run:N``), the end of its wait
(``woke:N``) and its result (``result:N``, only when it finished the job) are appended to a
Redis list, ``haven:probe:{job_id}``, kept for a day."""

from __future__ import annotations

import time

from haven.db.engine import transaction
from haven.db.tables import JobKind
from workers.jobs.handler import Claim, JobHandler, finish
from workers.jobs.heartbeat import Heartbeat, JobDeferred
from workers.jobs.registry import register
from workers.runtime import WorkerRuntime

MAX_SECONDS = 3600.0
KEPT_SECONDS = 86400


def probe_key(job_id: object) -> str:
    return f"haven:probe:{job_id}"


class ProbeHandler(JobHandler):
    kind = JobKind.PROBE

    def run(self, rt: WorkerRuntime, claim: Claim, beat: Heartbeat) -> None:
        seconds = min(max(float(claim.params.get("seconds", 0)), 0.0), MAX_SECONDS)
        deadline = claim.params.get("step_deadline")
        beat(done=0, deadline=float(deadline) if deadline is not None else None)
        key = probe_key(claim.job_id)
        deferrals = int(claim.params.get("defer", 0))
        if deferrals and _deferrals(rt, key) < deferrals:
            rt.redis.rpush(key, f"deferred:{claim.attempt}")
            rt.redis.expire(key, KEPT_SECONDS)
            raise JobDeferred("probe.defer")
        rt.redis.rpush(key, f"run:{claim.attempt}")
        rt.redis.expire(key, KEPT_SECONDS)
        time.sleep(seconds)  # one step that reaches no boundary while it lasts
        rt.redis.rpush(key, f"woke:{claim.attempt}")
        with transaction(rt.session_factory) as session:
            finish(session, claim)
        rt.redis.rpush(key, f"result:{claim.attempt}")


def _deferrals(rt: WorkerRuntime, key: str) -> int:
    entries: list[bytes | str] = list(rt.redis.lrange(key, 0, -1))
    return sum(
        (entry.decode() if isinstance(entry, bytes) else entry).startswith("deferred:")
        for entry in entries
    )


register(ProbeHandler())
