"""Operator controls on a real API (PostgreSQL, Redis, RabbitMQ, S3): read-only mode switched
from the API and from the CLI and seen by a second replica, and the ingest queue caps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from minio import Minio
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from api.main import create_app
from api.settings import ApiSettings
from haven.cli import app as cli
from haven.db.engine import transaction
from haven.db.repositories import AuditLog
from haven.db.tables import AuditEntry, Document, Job, JobKind, JobState, Role
from haven.queue_caps import QueuedJobs
from haven.read_only import switch
from haven.settings import StoreSettings
from tests.fixtures.api import Account, create_tenant_with_admin, create_user, upload
from tests.integration import test_job_runner
from tests.integration.test_job_runner import (
    Workers,
    job_row,
    recorded,
    runs,
    send_probe,
    wait_for,
)


@pytest.fixture(autouse=True)
def read_only_off_after(api_settings: ApiSettings) -> Iterator[None]:
    """A test that fails half-way must not leave the shared database read-only."""
    yield
    from haven.db.engine import make_engine, make_session_factory
    from haven.read_only import read

    engine = make_engine(api_settings)
    try:
        with transaction(make_session_factory(engine)) as session:
            if read(session).on:
                switch(session, AuditLog(session, None, None), on=False, reason="test", by="test")
    finally:
        engine.dispose()


def _switch(client: TestClient, admin: Account, on: bool, reason: str | None = None) -> Any:
    response = client.put(
        "/api/v1/admin/read-only", json={"on": on, "reason": reason}, headers=admin.headers
    )
    assert response.status_code == 200, response.text
    return response.json()


def _refused_read_only(response: Any, reason: str) -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["code"] == "read_only"
    assert body["reason"] == reason and reason in body["detail"]
    assert int(response.headers["Retry-After"]) >= 1


@pytest.fixture()
def second_replica(api_settings: ApiSettings) -> Iterator[TestClient]:
    """Another API process on the same stores, which reads the switch on every request."""
    settings = api_settings.model_copy(update={"read_only_cache_seconds": 0.0})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_read_only_refuses_writes_with_the_reason_keeps_reads_and_is_audited(
    api_client: TestClient,
    second_replica: TestClient,
    platform_admin: Account,
    tenant_a: Account,
) -> None:
    editor = create_user(api_client, tenant_a, Role.EDITOR)
    kept = upload(api_client, editor, b"written before the pause")
    assert kept.status_code == 201
    reason = "upgrading PostgreSQL until 23:00 UTC"

    state = _switch(api_client, platform_admin, True, reason)
    assert state["on"] is True and state["reason"] == reason and state["since"]

    # Both replicas refuse writes, with the reason, before anything is stored.
    for client in (api_client, second_replica):
        _refused_read_only(upload(client, editor, b"a new file during the pause"), reason)
        _refused_read_only(
            client.patch(
                f"/api/v1/admin/users/{editor.user_id}",
                json={"role": "viewer"},
                headers=tenant_a.headers,
            ),
            reason,
        )
        _refused_read_only(
            client.post("/api/v1/admin/api-keys", json={"name": "ci"}, headers=tenant_a.headers),
            reason,
        )
        version = client.get("/api/version").json()
        assert version["read_only"]["on"] is True and version["read_only"]["reason"] == reason
        # Reads go on, and so does signing in.
        listed = client.get("/api/v1/documents", headers=editor.headers)
        assert listed.status_code == 200 and listed.json()["total"] == 1
        signed_in = client.post(
            "/api/v1/auth/token",
            data={"username": editor.username, "password": "correct-horse-battery"},
        )
        assert signed_in.status_code == 200
    metrics = api_client.get("/metrics").text
    assert "haven_read_only 1.0" in metrics

    with transaction(api_client.app.state.runtime.session_factory) as session:  # type: ignore[attr-defined]
        documents = session.execute(
            select(func.count()).select_from(Document).where(Document.tenant_id == editor.tenant_id)
        ).scalar_one()
    assert documents == 1
    users = api_client.get(f"/api/v1/admin/users/{editor.user_id}", headers=tenant_a.headers)
    assert users.json()["role"] == "editor"

    state = _switch(api_client, platform_admin, False, "upgrade done")
    assert state["on"] is False
    assert second_replica.get("/api/version").json()["read_only"]["on"] is False
    assert upload(second_replica, editor, b"a new file after the pause").status_code == 201
    created = second_replica.post(
        "/api/v1/admin/api-keys", json={"name": "ci"}, headers=tenant_a.headers
    )
    assert created.status_code == 201

    audit = api_client.get("/api/v1/admin/audit", headers=platform_admin.headers).json()
    switches = [e for e in audit if e["action"].startswith("platform.read_only")]
    assert [e["action"] for e in switches] == ["platform.read_only.off", "platform.read_only.on"]
    assert switches[1]["details"]["reason"] == reason
    assert switches[1]["actor_id"] == str(platform_admin.user_id)


def test_only_a_platform_admin_switches_read_only(
    api_client: TestClient, tenant_a: Account
) -> None:
    response = api_client.put(
        "/api/v1/admin/read-only", json={"on": True, "reason": "x"}, headers=tenant_a.headers
    )
    assert response.status_code == 403
    bad = api_client.put(
        "/api/v1/admin/read-only", json={"on": "maybe", "reason": "a\x00b"}, headers={}
    )
    assert bad.status_code in (401, 422)
    assert api_client.get("/api/version").json()["read_only"]["on"] is False


def test_cli_switch_is_seen_by_the_api_and_audited(
    api_client: TestClient,
    second_replica: TestClient,
    tenant_a: Account,
    api_settings: ApiSettings,
) -> None:
    env = {"HAVEN_DATABASE_URL": api_settings.database_url.get_secret_value()}
    runner = CliRunner()
    result = runner.invoke(cli, ["admin", "read-only", "on", "--reason", "disk swap"], env=env)
    assert result.exit_code == 0, result.output
    assert "read-only: on" in result.output and "disk swap" in result.output
    try:
        _refused_read_only(
            second_replica.post(
                "/api/v1/admin/api-keys", json={"name": "ci"}, headers=tenant_a.headers
            ),
            "disk swap",
        )
        status = runner.invoke(cli, ["admin", "read-only", "status"], env=env)
        assert "on since" in status.output
    finally:
        result = runner.invoke(cli, ["admin", "read-only", "off"], env=env)
        assert result.exit_code == 0 and "read-only: off" in result.output
    assert (
        second_replica.post(
            "/api/v1/admin/api-keys", json={"name": "ci"}, headers=tenant_a.headers
        ).status_code
        == 201
    )
    with transaction(api_client.app.state.runtime.session_factory) as session:  # type: ignore[attr-defined]
        actions = session.execute(
            select(AuditEntry.action, AuditEntry.actor_kind)
            .where(AuditEntry.action.like("platform.read_only.%"))
            .order_by(AuditEntry.id.desc())
            .limit(2)
        ).all()
    assert [tuple(a) for a in actions] == [
        ("platform.read_only.off", "cli"),
        ("platform.read_only.on", "cli"),
    ]


# --- queue caps -------------------------------------------------------------------------------


@pytest.fixture()
def capped_client(
    api_settings: ApiSettings, session_factory: sessionmaker[Session]
) -> Iterator[TestClient]:
    """Two waiting ingest jobs per tenant, three more than earlier tests left in total (no
    worker runs here: every job stays queued)."""
    with transaction(session_factory) as session:
        waiting = QueuedJobs(session).count(JobKind.INGEST)
    settings = api_settings.model_copy(
        update={
            "queue_cap_per_tenant": {"ingest": 2},
            "queue_cap_total": {"ingest": waiting + 3},
        }
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def _stored(
    factory: sessionmaker[Session], s3: Minio, bucket: str, account: Account
) -> tuple[int, int, int]:
    with transaction(factory) as session:
        documents = session.execute(
            select(func.count())
            .select_from(Document)
            .where(Document.tenant_id == account.tenant_id)
        ).scalar_one()
        jobs = session.execute(
            select(func.count())
            .select_from(Job)
            .where(Job.tenant_id == account.tenant_id, Job.state == JobState.QUEUED)
        ).scalar_one()
    objects = len(
        list(s3.list_objects(bucket, prefix=f"tenant/{account.tenant_id}/", recursive=True))
    )
    return documents, jobs, objects


def test_a_tenant_past_its_queue_cap_gets_429_while_another_is_accepted(
    capped_client: TestClient, platform_admin: Account, api_settings: ApiSettings
) -> None:
    busy = create_user(
        capped_client, create_tenant_with_admin(capped_client, platform_admin), Role.EDITOR
    )
    other = create_user(
        capped_client, create_tenant_with_admin(capped_client, platform_admin), Role.EDITOR
    )
    runtime = capped_client.app.state.runtime  # type: ignore[attr-defined]
    for n in range(2):
        assert upload(capped_client, busy, f"file {n}".encode(), name=f"{n}.txt").status_code == 201
    refused = upload(capped_client, busy, b"one too many", name="late.txt")
    assert refused.status_code == 429, refused.text
    assert refused.json()["code"] == "queue.tenant_full"
    assert int(refused.headers["Retry-After"]) == api_settings.queue_cap_retry_after_seconds
    presign = capped_client.post(
        "/api/v1/documents/uploads", json={"filename": "late.txt"}, headers=busy.headers
    )
    assert presign.status_code == 429
    # Nothing of the refused uploads was stored: two documents, two jobs, two objects.
    assert _stored(runtime.session_factory, runtime.s3, api_settings.s3_bucket, busy) == (2, 2, 2)
    # The same bytes again are no new job: accepted as the duplicate they are.
    assert upload(capped_client, busy, b"file 0", name="0.txt").status_code == 200

    # Another tenant is not held back by the busy one's share...
    assert upload(capped_client, other, b"theirs", name="a.txt").status_code == 201
    # ...until the platform's ingest queue is full: then everyone waits, with 503.
    full = upload(capped_client, other, b"theirs too", name="b.txt")
    assert full.status_code == 503 and full.json()["code"] == "queue.full"
    assert "Retry-After" in full.headers
    assert _stored(runtime.session_factory, runtime.s3, api_settings.s3_bucket, other) == (1, 1, 1)

    metrics = capped_client.get("/metrics").text
    assert f'haven_jobs_queued{{kind="ingest",tenant="{busy.tenant_id}"}} 2.0' in metrics
    assert f'haven_jobs_queued{{kind="ingest",tenant="{other.tenant_id}"}} 1.0' in metrics
    assert 'haven_jobs{kind="ingest",state="queued"}' in metrics


# --- workers in read-only mode ----------------------------------------------------------------


@pytest.fixture()
def workers(
    store_overrides: dict[str, Any], store_settings: StoreSettings, tmp_path: Path
) -> Iterator[Workers]:
    """The job runner tests' worker processes (probes on the maintenance queue)."""
    yield from test_job_runner.workers.__wrapped__(  # type: ignore[attr-defined]
        store_overrides, store_settings, tmp_path
    )


def test_workers_finish_the_job_they_hold_and_take_no_new_one_while_read_only(
    workers: Workers,
    session_factory: sessionmaker[Session],
    redis_client: redis.Redis,
    tenant_a: Account,
) -> None:
    workers.env.update(
        {"HAVEN_READ_ONLY_CACHE_SECONDS": "0", "HAVEN_READ_ONLY_RETRY_AFTER_SECONDS": "1"}
    )
    worker = workers.start("w1")
    held = send_probe(session_factory, workers, redis_client, tenant_a, seconds=3, max_attempts=2)
    wait_for(recorded(redis_client, held, "run:1"), 60, "the first probe to start", workers)
    with transaction(session_factory) as session:
        switch(session, AuditLog(session, None, None), on=True, reason="test", by="test")
    waiting = send_probe(
        session_factory, workers, redis_client, tenant_a, seconds=0, max_attempts=2
    )
    # The held job ends ready; the new one is delivered, put back, and not started.
    wait_for(lambda: job_row(session_factory, held).state == "ready", 60, "the held job", workers)
    wait_for(
        lambda: (
            f'"job_id": "{waiting}"' in worker.log_path.read_text()
            and "job.deferred_read_only" in worker.log_path.read_text()
        ),
        60,
        "the new job to be put back",
        workers,
    )
    assert job_row(session_factory, waiting).state == "queued"
    assert runs(redis_client, waiting) == []

    with transaction(session_factory) as session:
        switch(session, AuditLog(session, None, None), on=False, reason="test", by="test")
    wait_for(lambda: job_row(session_factory, waiting).state == "ready", 60, "the new job", workers)
    assert runs(redis_client, waiting) == ["run:1", "woke:1", "result:1"]
