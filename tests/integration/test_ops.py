"""Health, readiness of each dependency, version, metrics and request ids."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from api.main import create_app
from api.settings import ApiSettings
from haven.db.engine import transaction
from haven.db.tables import Job, JobState
from haven.errors import Unavailable
from tests.fixtures.api import Account

DEPENDENCIES = {"postgres", "redis", "broker", "s3", "vector_store"}


def test_readyz_reports_every_dependency(api_client: TestClient) -> None:
    response = api_client.get("/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == DEPENDENCIES
    assert all(check["ok"] for check in body["checks"].values())


def test_readyz_names_the_dependency_that_is_down(store_overrides: dict[str, Any]) -> None:
    settings = ApiSettings(
        **{
            **store_overrides,
            "redis_url": "redis://127.0.0.1:1/0",
            "broker_url": "amqp://guest:guest@127.0.0.1:1//",
        }
    )
    with TestClient(create_app(settings)) as client:
        response = client.get("/readyz")
        assert client.get("/healthz").status_code == 200  # alive, just not ready
    assert response.status_code == 503
    body = response.json()
    assert sorted(body["failed"]) == ["broker", "redis"]
    assert body["checks"]["postgres"]["ok"] is True
    # A reason code, never the dependency's own error text (hosts, ports, users).
    assert body["checks"]["redis"] == {"ok": False, "reason": "unreachable"}
    assert body["checks"]["broker"] == {"ok": False, "reason": "unreachable"}
    assert "127.0.0.1" not in response.text and "Error" not in response.text


def test_readyz_waits_for_what_runs_beside_the_api(api_client: TestClient) -> None:
    """The all-in-one process adds its worker: ready means ready to ingest."""
    worker_started = threading.Event()

    def check_worker() -> None:
        if not worker_started.is_set():
            raise Unavailable("the worker is starting", code="worker.starting")

    api_client.app.state.runtime.readiness_checks["worker"] = check_worker  # type: ignore[attr-defined]
    starting = api_client.get("/readyz")
    assert starting.status_code == 503
    assert starting.json()["failed"] == ["worker"]
    assert starting.json()["checks"]["worker"] == {"ok": False, "reason": "worker.starting"}
    worker_started.set()
    ready = api_client.get("/readyz")
    assert ready.status_code == 200
    assert set(ready.json()["checks"]) == DEPENDENCIES | {"worker"}


def test_version(api_client: TestClient) -> None:
    body = api_client.get("/api/version").json()
    assert body["service"] == "api"
    assert {"version", "build", "commit"} <= set(body)


def test_request_id_is_taken_or_made(api_client: TestClient) -> None:
    echoed = api_client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["X-Request-ID"] == "abc-123"
    made = api_client.get("/healthz", headers={"X-Request-ID": "bad id\nwith newline"})
    assert made.headers["X-Request-ID"] != "bad id\nwith newline"
    assert len(made.headers["X-Request-ID"]) == 32


def test_metrics_count_requests_by_route_template(
    api_client: TestClient, tenant_a: Account
) -> None:
    api_client.get(f"/api/v1/admin/users/{tenant_a.user_id}", headers=tenant_a.headers)
    text = api_client.get("/metrics").text
    assert (
        'haven_http_requests_total{method="GET",route="/api/v1/admin/users/{user_id}",'
        'service="api",status="200"} 1.0'
    ) in text
    assert "haven_http_request_duration_seconds_bucket" in text
    assert str(tenant_a.user_id) not in text


def test_unhandled_errors_are_json_without_trace(api_client: TestClient) -> None:
    response = api_client.post("/api/v1/auth/token", data={"username": "x"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "body.password"


def _sample(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_show_waiting_messages_and_stuck_jobs(
    api_client: TestClient, tenant_a: Account, session_factory: sessionmaker[Session]
) -> None:
    uploaded = api_client.post(
        "/api/v1/documents",
        files={"file": ("notes.txt", b"Quarterly notes about the harbour cranes.")},
        headers=tenant_a.headers,
    )
    assert uploaded.status_code == 201, uploaded.text
    job_id = uuid.UUID(uploaded.json()["job_id"])

    metrics = api_client.get("/metrics").text
    # No worker runs here: the upload's message waits in the ingest queue.
    assert (_sample(metrics, 'haven_queue_length{queue="ingest"}') or 0) >= 1
    assert _sample(metrics, 'haven_queue_length{queue="haven.dead"}') is not None
    stuck_before = _sample(metrics, "haven_jobs_stuck")
    assert stuck_before is not None

    # A worker took the job and died: no heartbeat for longer than two leases.
    with transaction(session_factory) as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(state=JobState.RUNNING, heartbeat_at=datetime.now(UTC) - timedelta(hours=1))
        )
    assert _sample(api_client.get("/metrics").text, "haven_jobs_stuck") == stuck_before + 1
