"""A running job's heartbeat: cancel seen at the next step boundary, progress and lease kept,
and a job taken from its run noticed (real PostgreSQL and Redis, a real subscriber thread
hearing cancels; the job made by an upload)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Protocol

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from haven.db.engine import transaction
from haven.db.tables import Job
from haven.jobs import JobStore
from tests.fixtures.api import Account
from workers.jobs import heartbeat as heartbeat_module
from workers.jobs.cancel_watch import CancelWatch
from workers.jobs.heartbeat import Heartbeat, JobCanceled, JobLost

LEASE = 30


@pytest.fixture()
def running_job(
    api_client: TestClient, tenant_a: Account, session_factory: sessionmaker[Session]
) -> uuid.UUID:
    """An ingest job as a worker holds it: claimed, running."""
    response = api_client.post(
        "/api/v1/documents",
        files={"file": ("note.txt", b"a note to ingest\n", "text/plain")},
        headers=tenant_a.headers,
    )
    assert response.status_code == 201, response.text
    job_id = uuid.UUID(response.json()["job_id"])
    with transaction(session_factory) as session:
        assert JobStore(session).claim(job_id, takeover=False, steps=5) is not None
    return job_id


@pytest.fixture()
def cancels(redis_client: redis.Redis) -> Iterator[CancelWatch]:
    watch = CancelWatch(redis_client)
    watch.start()
    yield watch
    watch.stop()


def heard(watch: CancelWatch, job_id: uuid.UUID, within: float = 5.0) -> bool:
    """Messages arrive on the watch's own thread: give it a moment."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if watch.canceled(job_id):
            return True
        time.sleep(0.02)
    return False


class StartBeat(Protocol):
    def __call__(self, *, interval: float, cancels: CancelWatch | None = None) -> Heartbeat: ...


@pytest.fixture()
def start_beat(
    running_job: uuid.UUID,
    redis_client: redis.Redis,
    session_factory: sessionmaker[Session],
    cancels: CancelWatch,
) -> StartBeat:
    """The running job's heartbeat as its worker makes it: the job's lock taken, the worker's
    cancel watch (or the one given) listening."""
    worker_watch = cancels

    def start(*, interval: float, cancels: CancelWatch | None = None) -> Heartbeat:
        lock = redis_client.lock(f"haven:lock:job:{running_job}", timeout=LEASE, blocking=False)
        assert lock.acquire()
        return Heartbeat(
            running_job,
            1,  # the claim above was the job's first attempt
            lock=lock,
            cancels=cancels or worker_watch,
            session_factory=session_factory,
            interval_seconds=interval,
            lease_seconds=LEASE,
        )

    return start


def job_row(factory: sessionmaker[Session], job_id: uuid.UUID) -> Job:
    with transaction(factory) as session:
        job = JobStore(session).get(job_id)
        assert job is not None
        return job


def test_cancel_through_the_api_stops_the_next_step_without_a_database_heartbeat(
    api_client: TestClient,
    tenant_a: Account,
    running_job: uuid.UUID,
    cancels: CancelWatch,
    start_beat: StartBeat,
) -> None:
    beat = start_beat(interval=3600)
    beat(done=1)  # nothing asked yet: the run goes on
    canceled = api_client.post(f"/api/v1/jobs/{running_job}/cancel", headers=tenant_a.headers)
    assert canceled.status_code == 200, canceled.text
    assert heard(cancels, running_job)
    with pytest.raises(JobCanceled):
        beat(done=2)  # the database heartbeat is an hour away; the message is enough


def test_a_cancel_the_worker_did_not_hear_is_seen_at_the_database_heartbeat(
    api_client: TestClient,
    tenant_a: Account,
    redis_client: redis.Redis,
    running_job: uuid.UUID,
    start_beat: StartBeat,
) -> None:
    deaf = CancelWatch(redis_client)  # never subscribed, as while Redis was restarting
    beat = start_beat(interval=0, cancels=deaf)
    api_client.post(f"/api/v1/jobs/{running_job}/cancel", headers=tenant_a.headers)
    with pytest.raises(JobCanceled):
        beat(done=2)


def test_the_watch_hears_cancels_again_after_its_connection_drops(
    api_client: TestClient,
    tenant_a: Account,
    redis_client: redis.Redis,
    running_job: uuid.UUID,
    cancels: CancelWatch,
) -> None:
    assert redis_client.client_kill_filter(_type="pubsub") >= 1
    # The subscriber reconnects and subscribes again on its own.
    deadline = time.monotonic() + 10
    while redis_client.pubsub_numsub("haven:jobs:cancel")[0][1] == 0:
        assert time.monotonic() < deadline, "the watch did not subscribe again"
        time.sleep(0.05)
    api_client.post(f"/api/v1/jobs/{running_job}/cancel", headers=tenant_a.headers)
    assert heard(cancels, running_job)


def test_a_new_run_forgets_a_cancel_heard_for_an_earlier_one(
    api_client: TestClient, tenant_a: Account, running_job: uuid.UUID, cancels: CancelWatch
) -> None:
    api_client.post(f"/api/v1/jobs/{running_job}/cancel", headers=tenant_a.headers)
    assert heard(cancels, running_job)
    cancels.forget(running_job)  # what begin() does when a retried job starts again
    assert not cancels.canceled(running_job)


def test_progress_reaches_the_jobs_api_at_the_database_heartbeat(
    api_client: TestClient,
    tenant_a: Account,
    running_job: uuid.UUID,
    start_beat: StartBeat,
) -> None:
    quiet = start_beat(interval=3600)
    quiet(done=3)
    seen = api_client.get(f"/api/v1/jobs/{running_job}", headers=tenant_a.headers).json()
    assert (seen["progress_done"], seen["progress_total"]) == (0, 5)  # not written yet
    quiet.write()
    seen = api_client.get(f"/api/v1/jobs/{running_job}", headers=tenant_a.headers).json()
    assert (seen["state"], seen["progress_done"], seen["progress_total"]) == ("running", 3, 5)


def test_a_job_taken_from_its_run_is_noticed(
    session_factory: sessionmaker[Session],
    running_job: uuid.UUID,
    start_beat: StartBeat,
) -> None:
    beat = start_beat(interval=0)
    with transaction(session_factory) as session:  # the reaper gave up on this run
        assert JobStore(session).back_to_queue(running_job, "worker.lost", "no heartbeat")
    with pytest.raises(JobLost):
        beat(done=2)
    assert job_row(session_factory, running_job).state == "queued"


def test_the_lease_is_renewed_once_a_third_of_it_is_gone(
    redis_client: redis.Redis,
    running_job: uuid.UUID,
    monkeypatch: pytest.MonkeyPatch,
    start_beat: StartBeat,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(heartbeat_module.time, "monotonic", lambda: clock[0])
    beat = start_beat(interval=3600)
    key = f"haven:lock:job:{running_job}"
    redis_client.pexpire(key, 5_000)  # as if most of the lease had passed
    clock[0] += 1
    beat(done=1)
    assert redis_client.pttl(key) <= 5_000  # not yet: a step every second costs no renewal
    clock[0] += LEASE / 3
    beat(done=2)
    assert redis_client.pttl(key) > 25_000  # renewed to a whole lease
