"""The job runner on real worker processes (``celery -A workers.main worker``) with real
PostgreSQL, Redis and RabbitMQ: a long step keeps its job, a step past its deadline loses it,
and a job whose worker is SIGKILLed on every attempt ends failed and dead-lettered.

The jobs are probes (``workers.jobs.probe``): one step that only waits, run by the same
runner, lease keeper, reaper and attempts cap as every other kind. Each run records itself
in Redis (``run:N``, ``woke:N``, ``result:N``), so a test sees every run of its job.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.settings import ApiSettings
from haven.auth.principal import Principal
from haven.db.engine import transaction
from haven.db.repositories import JobRepository
from haven.db.tables import AuditEntry, Job, JobKind, Role
from haven.queueing import JOB_TASKS, create_celery, send_job_once
from haven.settings import StoreSettings
from tests.fixtures.api import Account
from tests.fixtures.processes import WorkerProcess, worker_env
from workers.jobs.probe import probe_key

LEASE = 2  # seconds; the reaper takes a job whose heartbeat is two leases old
QUEUE = "maintenance"


class Workers:
    """Worker processes consuming the maintenance queue (where probes go)."""

    def __init__(self, env: dict[str, str], folder: Path, settings: StoreSettings) -> None:
        self.env = env
        self.folder = folder
        self.celery = create_celery(settings)
        self.running: list[WorkerProcess] = []

    def consumers(self) -> int:
        with self.celery.connection_for_read() as conn:
            return int(conn.default_channel.queue_declare(QUEUE, passive=True).consumer_count)

    def start(self, name: str, *, beat: bool = False) -> WorkerProcess:
        worker = WorkerProcess(name, self.env, self.folder / f"{name}.log", QUEUE, beat=beat)
        before = self.consumers()
        self.running.append(worker.start(before, self.consumers))
        return worker

    def stop_all(self) -> None:
        for worker in self.running:
            worker.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {w.name}\n{w.tail()}" for w in self.running)


@pytest.fixture()
def workers(
    store_overrides: dict[str, Any], store_settings: StoreSettings, tmp_path: Path
) -> Iterator[Workers]:
    env = {
        **worker_env(store_overrides, tmp_path),
        "HAVEN_JOB_LEASE_SECONDS": str(LEASE),
        "HAVEN_JOB_HEARTBEAT_SECONDS": "0.5",
        "HAVEN_REAPER_INTERVAL_SECONDS": "1",
        "HAVEN_RETRY_BACKOFF_SECONDS": "0.2",
        "HAVEN_RETRY_BACKOFF_MAX_SECONDS": "0.5",
        "HAVEN_JOB_DEFER_SECONDS": "0.2",
        "HAVEN_JOB_DEFER_MAX_SECONDS": "0.5",
    }
    pool = Workers(env, tmp_path, store_settings)
    # No probe of an earlier test (the queue may not be declared yet).
    with pool.celery.connection_for_write() as conn, contextlib.suppress(Exception):
        conn.default_channel.queue_purge(QUEUE)
    try:
        yield pool
    finally:
        pool.stop_all()


def send_probe(
    factory: sessionmaker[Session],
    workers: Workers,
    client: redis.Redis,
    owner: Account,
    *,
    seconds: float,
    max_attempts: int,
    step_deadline: float | None = None,
    defer: int = 0,
) -> uuid.UUID:
    params: dict[str, Any] = {"seconds": seconds}
    if defer:
        params["defer"] = defer
    if step_deadline is not None:
        params["step_deadline"] = step_deadline
    principal = Principal(
        subject_id=owner.user_id, tenant_id=owner.tenant_id, role=Role.TENANT_ADMIN, kind="user"
    )
    with transaction(factory) as session:
        job = JobRepository(session, principal).add_system_job(
            JobKind.PROBE,
            idempotency_key=f"probe:{uuid.uuid4()}",
            params=params,
            max_attempts=max_attempts,
        )
        job_id = job.id
    send_job_once(workers.celery, client, JOB_TASKS["probe"], str(job_id), expires_seconds=600)
    return job_id


def job_row(factory: sessionmaker[Session], job_id: uuid.UUID) -> Job:
    with transaction(factory) as session:
        job = session.get(Job, job_id, populate_existing=True)
        assert job is not None
        session.expunge(job)
        return job


def runs(client: redis.Redis, job_id: uuid.UUID) -> list[str]:
    return [entry.decode() for entry in client.lrange(probe_key(job_id), 0, -1)]


def recorded(client: redis.Redis, job_id: uuid.UUID, entry: str) -> Callable[[], bool]:
    return lambda: entry in runs(client, job_id)


def wait_for(check: Callable[[], bool], timeout: float, what: str, workers: Workers) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{workers.logs()}")
        time.sleep(0.2)


def test_a_step_three_leases_long_keeps_its_job_on_one_worker(
    workers: Workers,
    session_factory: sessionmaker[Session],
    redis_client: redis.Redis,
    tenant_a: Account,
) -> None:
    workers.start("w1", beat=True)  # with the reaper, every second
    workers.start("w2")  # a second worker, idle, that could take the job over
    job_id = send_probe(
        session_factory, workers, redis_client, tenant_a, seconds=3 * LEASE + 1, max_attempts=3
    )
    wait_for(
        lambda: job_row(session_factory, job_id).state in ("ready", "failed"),
        90,
        "the probe to end",
        workers,
    )
    job = job_row(session_factory, job_id)
    assert (job.state, job.attempts, job.last_error) == ("ready", 1, None)
    assert runs(redis_client, job_id) == ["run:1", "woke:1", "result:1"]  # one run, one result


def test_a_deferred_job_goes_back_to_the_queue_without_spending_an_attempt(
    workers: Workers,
    session_factory: sessionmaker[Session],
    redis_client: redis.Redis,
    tenant_a: Account,
) -> None:
    workers.start("w1", beat=True)
    workers.start("w2")
    # One attempt allowed: a deferral that spent it would leave the job failed. More
    # deferrals than Celery's own default retry cap (3).
    job_id = send_probe(
        session_factory, workers, redis_client, tenant_a, seconds=0, max_attempts=1, defer=5
    )
    wait_for(
        lambda: job_row(session_factory, job_id).state in ("ready", "failed"),
        90,
        "the probe to end",
        workers,
    )
    job = job_row(session_factory, job_id)
    assert (job.state, job.attempts, job.last_error) == ("ready", 1, None)
    assert runs(redis_client, job_id) == [
        *["deferred:1"] * 5,
        "run:1",
        "woke:1",
        "result:1",
    ]


def test_a_step_past_its_deadline_is_retried_then_failed_and_its_late_end_discarded(
    workers: Workers,
    session_factory: sessionmaker[Session],
    redis_client: redis.Redis,
    tenant_a: Account,
) -> None:
    workers.start("w1")
    job_id = send_probe(
        session_factory,
        workers,
        redis_client,
        tenant_a,
        seconds=3 * LEASE,
        step_deadline=1,
        max_attempts=2,
    )
    wait_for(
        lambda: job_row(session_factory, job_id).state in ("ready", "failed"),
        90,
        "the probe to end",
        workers,
    )
    job = job_row(session_factory, job_id)
    assert (job.state, job.attempts, job.last_error) == ("failed", 2, "step.timeout")
    assert job.last_error_message is not None
    assert job.last_error_message.startswith("gave up after 2 attempts")
    # Both stuck steps come back in the end; neither may finish the job.
    wait_for(
        lambda: {"woke:1", "woke:2"} <= set(runs(redis_client, job_id)),
        60,
        "the late steps to return",
        workers,
    )
    assert not [r for r in runs(redis_client, job_id) if r.startswith("result:")]
    assert job_row(session_factory, job_id).state == "failed"


def test_a_job_whose_worker_is_killed_on_every_attempt_ends_failed_and_dead_lettered(
    workers: Workers,
    session_factory: sessionmaker[Session],
    redis_client: redis.Redis,
    api_client: TestClient,
    tenant_a: Account,
) -> None:
    job_id = send_probe(
        session_factory, workers, redis_client, tenant_a, seconds=600, max_attempts=2
    )
    for started in ("run:1", "run:2"):
        worker = workers.start(f"doomed-{started[-1]}")
        wait_for(recorded(redis_client, job_id, started), 90, f"{started} to start", workers)
        worker.kill9()  # as the kernel's OOM killer would, mid-step
    # RabbitMQ gives the unacknowledged message to the next worker: its claim counts the
    # attempt, finds none left, fails the job and dead-letters the message.
    workers.start("survivor")
    wait_for(
        lambda: job_row(session_factory, job_id).state not in ("queued", "running"),
        90,
        "the job to end",
        workers,
    )
    job = job_row(session_factory, job_id)
    assert (job.state, job.attempts, job.last_error) == ("failed", 2, "worker.lost")
    assert runs(redis_client, job_id) == ["run:1", "run:2"]  # never a third run

    def letters() -> list[dict[str, Any]]:
        listed = api_client.get("/api/v1/admin/dead-letters", headers=tenant_a.headers)
        assert listed.status_code == 200, listed.text
        return [d for d in listed.json() if d["job_id"] == str(job_id)]

    wait_for(lambda: len(letters()) == 1, 30, "the dead letter", workers)
    assert letters()[0]["reason"].startswith("worker.lost: gave up after 2 attempts")
    shown = api_client.get(f"/api/v1/jobs/{job_id}", headers=tenant_a.headers).json()
    assert (shown["last_error"], shown["state"]) == ("worker.lost", "failed")
    assert "Error" not in shown["last_error_message"]  # a sentence, not an exception


@pytest.fixture()
def api_settings(store_overrides: dict[str, Any]) -> ApiSettings:
    return ApiSettings(**store_overrides, job_max_retries=1)


def test_a_manual_retry_grants_fresh_attempts_is_audited_and_capped(
    api_client: TestClient,
    session_factory: sessionmaker[Session],
    tenant_a: Account,
) -> None:
    principal = Principal(
        subject_id=tenant_a.user_id, tenant_id=tenant_a.tenant_id, role=Role.EDITOR, kind="user"
    )
    with transaction(session_factory) as session:
        job = JobRepository(session, principal).add_system_job(
            JobKind.PROBE, idempotency_key=f"probe:{uuid.uuid4()}", params={}, max_attempts=2
        )
        job.attempts = 2  # spent
        job_id = job.id
    path = f"/api/v1/jobs/{job_id}"
    assert api_client.post(f"{path}/cancel", headers=tenant_a.headers).status_code == 200
    retried = api_client.post(f"{path}/retry", headers=tenant_a.headers)
    assert retried.status_code == 200, retried.text
    assert (retried.json()["attempts"], retried.json()["retries"]) == (0, 1)
    with transaction(session_factory) as session:
        audit = session.execute(
            select(AuditEntry).where(
                AuditEntry.action == "job.retry", AuditEntry.target_id == str(job_id)
            )
        ).scalar_one()
        assert audit.details["attempts_spent"] == 2
        assert audit.details["previous_state"] == "canceled"

    assert api_client.post(f"{path}/cancel", headers=tenant_a.headers).status_code == 200
    refused = api_client.post(f"{path}/retry", headers=tenant_a.headers)
    assert refused.status_code == 409
    assert refused.json()["code"] == "job.retry_limit"
    assert job_row(session_factory, job_id).state == "canceled"  # nothing was sent
