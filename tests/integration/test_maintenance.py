"""Maintenance tasks on a real worker process (``celery -A workers.main worker -Q maintenance``)
with real PostgreSQL, Redis, RabbitMQ and an S3 endpoint: the admin API and the CLI run a task
as a job, only platform admins may, one run of a task at a time."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from minio.error import S3Error
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from haven.db.engine import transaction
from haven.db.tables import AuditEntry, Job, JobKind, JobState, Role, Upload
from haven.maintenance import PLATFORM_TENANT_ID
from haven.queueing import create_celery
from haven.settings import StoreSettings
from tests.fixtures.api import Account, create_user
from tests.fixtures.processes import ROOT, WorkerProcess, worker_env
from workers.maintenance.handler import TaskBusy, TaskLock, lock_key, run_here
from workers.maintenance.tasks import TaskContext, maintenance_task, tasks
from workers.runtime import WorkerRuntime
from workers.settings import WorkerSettings

QUEUE = "maintenance"
# No run of the schedule during a test.
SCHEDULE_OFF = json.dumps({"backup": "off", "backup-retention": "off", "stale-uploads": "off"})


@pytest.fixture()
def maintenance_worker(
    store_overrides: dict[str, Any], store_settings: StoreSettings, tmp_path: Path
) -> Iterator[dict[str, str]]:
    """One worker consuming the maintenance queue; yields its environment."""
    env = {
        **worker_env(store_overrides, tmp_path),
        "HAVEN_MAINTENANCE_SCHEDULE": SCHEDULE_OFF,
        "HAVEN_BACKUP_FOLDER": str(tmp_path / "backups"),
    }
    celery = create_celery(store_settings)

    def consumers() -> int:
        with celery.connection_for_read() as conn:
            try:
                return int(conn.default_channel.queue_declare(QUEUE, passive=True).consumer_count)
            except Exception:
                return 0

    with celery.connection_for_write() as conn, contextlib.suppress(Exception):
        conn.default_channel.queue_purge(QUEUE)
    _finish_leftover_runs(store_settings)
    worker = WorkerProcess("maint", env, tmp_path / "worker.log", QUEUE)
    worker.start(consumers(), consumers)
    try:
        yield env
    finally:
        worker.stop()


def _finish_leftover_runs(settings: StoreSettings) -> None:
    """Runs another test left queued (its worker gone) would be returned instead of a new
    one: end them."""
    from haven.db.engine import make_engine, make_session_factory

    engine = make_engine(settings)
    try:
        with transaction(make_session_factory(engine)) as session:
            for job in session.scalars(
                select(Job).where(
                    Job.tenant_id == PLATFORM_TENANT_ID,
                    Job.state.in_([JobState.QUEUED, JobState.RUNNING]),
                )
            ):
                job.state = JobState.CANCELED
    finally:
        engine.dispose()


def _expired_upload(factory: sessionmaker[Session], client: TestClient, who: Account) -> Upload:
    created = client.post(
        "/api/v1/documents/uploads", json={"filename": "gone.txt"}, headers=who.headers
    ).json()
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    runtime.s3.put_object(
        runtime.settings.s3_bucket, created["fields"]["key"], _Bytes(b"abandoned"), length=9
    )
    with transaction(factory) as session:
        upload = session.get(Upload, uuid.UUID(created["upload_id"]))
        assert upload is not None
        upload.expires_at = datetime.now(UTC) - timedelta(hours=3)
        session.flush()
        session.expunge(upload)
    return upload


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, n: int = -1) -> bytes:
        out, self.data = (self.data, b"") if n < 0 else (self.data[:n], self.data[n:])
        return out


def _wait_ended(factory: sessionmaker[Session], job_id: uuid.UUID, timeout: float = 60) -> Job:
    deadline = time.monotonic() + timeout
    while True:
        with transaction(factory) as session:
            job = session.get(Job, job_id, populate_existing=True)
            assert job is not None
            if job.state in (JobState.READY, JobState.FAILED, JobState.CANCELED):
                session.expunge(job)
                return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job.state}")
        time.sleep(0.3)


def test_a_platform_admin_runs_a_task_through_the_api(
    maintenance_worker: dict[str, str],
    api_client: TestClient,
    session_factory: sessionmaker[Session],
    platform_admin: Account,
    tenant_a: Account,
) -> None:
    abandoned = _expired_upload(session_factory, api_client, tenant_a)

    listed = api_client.get("/api/v1/admin/maintenance", headers=platform_admin.headers)
    assert listed.status_code == 200, listed.text
    tasks = {t["name"]: t for t in listed.json()}
    assert {"backup", "backup-retention", "stale-uploads"} <= set(tasks)
    assert tasks["stale-uploads"]["schedule"] == "off"  # the worker's own schedule

    started = api_client.post(
        "/api/v1/admin/maintenance/stale-uploads/run", headers=platform_admin.headers
    )
    assert started.status_code == 202, started.text
    assert started.json()["created"] is True
    job = _wait_ended(session_factory, uuid.UUID(started.json()["run"]["id"]))
    assert job.state == JobState.READY, job.last_error_message
    assert job.kind == JobKind.MAINTENANCE and job.tenant_id == PLATFORM_TENANT_ID
    assert job.result["removed"] >= 1

    runtime = api_client.app.state.runtime  # type: ignore[attr-defined]
    with transaction(session_factory) as session:
        assert session.get(Upload, abandoned.id) is None
        actions = set(
            session.scalars(
                select(AuditEntry.action).where(AuditEntry.details["job_id"].astext == str(job.id))
            )
        )
    assert actions == {"maintenance.run", "maintenance.done"}
    with pytest.raises(S3Error, match="NoSuchKey"):
        runtime.s3.stat_object(runtime.settings.s3_bucket, abandoned.object_key)

    after = api_client.get("/api/v1/admin/maintenance", headers=platform_admin.headers).json()
    last = {t["name"]: t for t in after}["stale-uploads"]["last_success"]
    assert last["id"] == str(job.id) and last["result"]["removed"] >= 1


def test_only_platform_admins_reach_maintenance(
    api_client: TestClient, platform_admin: Account, tenant_a: Account
) -> None:
    viewer = create_user(api_client, tenant_a, Role.VIEWER)
    for who in (tenant_a, viewer):
        assert api_client.get("/api/v1/admin/maintenance", headers=who.headers).status_code == 403
        refused = api_client.post("/api/v1/admin/maintenance/backup/run", headers=who.headers)
        assert refused.status_code == 403
        cancel = f"/api/v1/admin/maintenance/runs/{uuid.uuid4()}/cancel"
        assert api_client.post(cancel, headers=who.headers).status_code == 403
    assert api_client.post("/api/v1/admin/maintenance/backup/run").status_code == 401
    unknown = api_client.post(
        "/api/v1/admin/maintenance/no-such-task/run", headers=platform_admin.headers
    )
    assert unknown.status_code == 404


def test_the_platform_tenant_that_owns_maintenance_is_no_customer_tenant(
    api_client: TestClient, session_factory: sessionmaker[Session], platform_admin: Account
) -> None:
    """It exists (the migration made it) but is not listed, changed or deleted through the
    API, and a fresh installation still counts as empty (``haven up`` creates its admin)."""
    from haven.db.repositories import PlatformRepository
    from haven.db.tables import Tenant

    with transaction(session_factory) as session:
        assert session.get(Tenant, PLATFORM_TENANT_ID) is not None
        assert PLATFORM_TENANT_ID not in {t.id for t in PlatformRepository(session).tenants()}
    headers = platform_admin.headers
    listed = api_client.get("/api/v1/admin/tenants", headers=headers).json()
    assert str(PLATFORM_TENANT_ID) not in {t["id"] for t in listed}
    path = f"/api/v1/admin/tenants/{PLATFORM_TENANT_ID}"
    assert api_client.patch(path, json={"is_active": True}, headers=headers).status_code == 404
    assert api_client.delete(path, headers=headers).status_code == 404
    with transaction(session_factory) as session:
        assert session.get(Tenant, PLATFORM_TENANT_ID) is not None


def test_a_second_request_returns_the_run_already_queued(
    store_overrides: dict[str, Any],
    store_settings: StoreSettings,
    api_client: TestClient,
    session_factory: sessionmaker[Session],
    platform_admin: Account,
) -> None:
    # No worker consumes: the first run stays queued while the second request is made.
    _finish_leftover_runs(store_settings)
    from haven.maintenance import Catalog, CatalogEntry, publish_catalog

    with transaction(session_factory) as session:
        publish_catalog(session, Catalog({"backup": CatalogEntry("backup", "Back up.", "off", 60)}))
    results: list[dict[str, Any]] = []

    def ask() -> None:
        response = api_client.post(
            "/api/v1/admin/maintenance/backup/run", headers=platform_admin.headers
        )
        results.append({"status": response.status_code, **response.json()})

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r["status"] for r in results) == [200, 200, 202]
    assert len({r["run"]["id"] for r in results}) == 1
    assert [r["created"] for r in results].count(True) == 1

    # Canceled while queued: it never starts, and the next request queues a new run.
    run_id = results[0]["run"]["id"]
    canceled = api_client.post(
        f"/api/v1/admin/maintenance/runs/{run_id}/cancel", headers=platform_admin.headers
    )
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["state"] == "canceled"
    again = api_client.post(
        f"/api/v1/admin/maintenance/runs/{run_id}/cancel", headers=platform_admin.headers
    )
    assert again.status_code == 409
    unknown = api_client.post(
        f"/api/v1/admin/maintenance/runs/{uuid.uuid4()}/cancel", headers=platform_admin.headers
    )
    assert unknown.status_code == 404
    fresh = api_client.post("/api/v1/admin/maintenance/backup/run", headers=platform_admin.headers)
    assert fresh.status_code == 202 and fresh.json()["run"]["id"] != run_id
    _finish_leftover_runs(store_settings)


def test_two_runs_of_a_task_at_once_one_runs(
    store_overrides: dict[str, Any], redis_client: redis.Redis
) -> None:
    settings = WorkerSettings(**store_overrides)
    runtime = WorkerRuntime(settings=settings, celery=create_celery(settings))
    inside = threading.Event()
    release = threading.Event()
    name = f"hold-{uuid.uuid4().hex[:8]}"

    @maintenance_task(name, cron="0 0 * * *", description="Holds its lock.", lock_seconds=30)
    def hold(ctx: TaskContext) -> dict[str, Any]:
        inside.set()
        assert release.wait(30)
        return {"held": True}

    first: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: first.update(run_here(runtime, name)))
    runner.start()
    try:
        assert inside.wait(30)
        with pytest.raises(TaskBusy) as busy:
            run_here(runtime, name)
        assert "cli:" in busy.value.message  # names the run that holds the task
    finally:
        release.set()
        runner.join(30)
    assert first == {"held": True}
    # Released: the next run goes ahead.
    assert run_here(runtime, name) == {"held": True}

    # A job whose worker died mid-run left the lock: its next attempt takes it over, any
    # other run is still refused until it ends.
    task = tasks()[name]
    TaskLock(runtime, task, "job-1").acquire()
    TaskLock(runtime, task, "job-1").acquire()
    with pytest.raises(TaskBusy) as other:
        TaskLock(runtime, task, "job-2").acquire()
    assert "(job job-1)" in other.value.message
    assert 0 < int(redis_client.ttl(lock_key(name))) <= 30


def test_the_cli_runs_a_task_and_waits_for_its_report(
    maintenance_worker: dict[str, str],
    api_client: TestClient,
    session_factory: sessionmaker[Session],
    tenant_a: Account,
) -> None:
    abandoned = _expired_upload(session_factory, api_client, tenant_a)
    done = subprocess.run(
        [sys.executable, "-m", "haven.cli", "maintenance", "run", "stale-uploads", "--wait"],
        cwd=ROOT,
        env={**os.environ, **maintenance_worker},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "queued stale-uploads: job" in done.stdout
    report = json.loads(done.stdout[done.stdout.index("{") :])
    assert report["removed"] >= 1
    with transaction(session_factory) as session:
        assert session.get(Upload, abandoned.id) is None

    listed = subprocess.run(
        [sys.executable, "-m", "haven.cli", "maintenance", "list"],
        cwd=ROOT,
        env={**os.environ, **maintenance_worker},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    line = next(x for x in listed.stdout.splitlines() if x.startswith("stale-uploads"))
    assert "off" in line and "last run ready" in line
