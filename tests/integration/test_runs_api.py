"""Code runs end to end: the API, a real worker on the run queue running code in bubblewrap,
the common-error registry in PostgreSQL and the generation service on the tiny GGUF; who may
run code; and what hostile callers get."""

from __future__ import annotations

import base64
import contextlib
import io
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from haven.db.tables import Role
from haven.queueing import create_celery
from haven.sandbox import SandboxSettings
from haven.settings import StoreSettings
from tests.fixtures.api import Account, create_user
from tests.fixtures.llm_service import Service, tiny_service
from tests.fixtures.processes import WorkerProcess, worker_env
from tests.fixtures.tiny_gguf import build_tiny_gguf
from workers.jobs.runner import run_job
from workers.runs.handler import RunFailed, RunHandler
from workers.runtime import WorkerRuntime
from workers.settings import WorkerSettings

QUEUE = "run"
NAME_ERROR = "total = 0\nfor i in range(3):\n    totl += i\nprint(total)\n"
UNUSUAL = (
    "class FluxCapacitorMisaligned(Exception):\n    pass\n\n"
    "raise FluxCapacitorMisaligned('the flux is at 1.21 gigawatts')\n"
)


@pytest.fixture()
def llm(s3_endpoint: str, tmp_path: Path) -> Iterator[Service]:
    model = build_tiny_gguf(tmp_path / "gguf")
    with tiny_service(s3_endpoint, tmp_path / "llm", model) as service:
        yield service


@pytest.fixture()
def runner(
    store_overrides: dict[str, Any], store_settings: StoreSettings, tmp_path: Path, llm: Service
) -> Iterator[WorkerProcess]:
    env = {
        **worker_env(store_overrides, tmp_path),
        "HAVEN_LLM_URL": llm.url,
        "HAVEN_RUNS_EXPLAIN_MAX_TOKENS": "24",
    }
    celery = create_celery(store_settings)

    def consumers() -> int:
        with celery.connection_for_read() as conn:
            return int(conn.default_channel.queue_declare(QUEUE, passive=True).consumer_count)

    with celery.connection_for_write() as conn, contextlib.suppress(Exception):
        conn.default_channel.queue_purge(QUEUE)  # runs the hostile tests queued
    worker = WorkerProcess("runner", env, tmp_path / "runner.log", QUEUE)
    before = 0
    with contextlib.suppress(Exception):
        before = consumers()
    worker.start(before, consumers)
    try:
        yield worker
    finally:
        worker.stop()


def submit(client: TestClient, who: Account, **body: Any) -> Any:
    return client.post("/api/v1/runs", json={"language": "python", **body}, headers=who.headers)


def finished(client: TestClient, who: Account, run_id: str, worker: WorkerProcess) -> Any:
    # A bounded wait for the worker, never an assertion on its speed.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        body = client.get(f"/api/v1/runs/{run_id}", headers=who.headers).json()
        if body["state"] in ("ready", "failed", "canceled"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"the run did not finish; worker log:\n{worker.tail()}")


def llm_calls(service: Service) -> float:
    return service.metric("haven_llm_prompt_tokens_total")


@pytest.mark.slow
def test_a_run_is_allowed_by_a_tenant_admin_and_its_errors_explained_registry_first(
    api_client: TestClient,
    tenant_a: Account,
    tenant_b: Account,
    runner: WorkerProcess,
    llm: Service,
) -> None:
    learner = create_user(api_client, tenant_a, Role.VIEWER)
    classmate = create_user(api_client, tenant_a, Role.VIEWER)

    # Not on the allow-list: refused with the reason.
    refused = submit(api_client, learner, code=NAME_ERROR)
    assert refused.status_code == 403
    assert refused.json()["code"] == "runs.not_allowed"
    assert "tenant admin" in refused.json()["detail"]

    allowed = api_client.put(
        "/api/v1/admin/run-access",
        json={"subject_id": str(learner.user_id), "daily_quota": 3},
        headers=tenant_a.headers,
    )
    assert allowed.status_code == 200, allowed.text
    audit = api_client.get("/api/v1/admin/audit", headers=tenant_a.headers).json()
    assert any(e["action"] == "runs.access.allow" for e in audit)

    # A NameError from a typo: the registry explains it, the language model is not asked.
    calls_before = llm_calls(llm)
    created = submit(api_client, learner, code=NAME_ERROR)
    assert created.status_code == 202, created.text
    run = finished(api_client, learner, created.json()["id"], runner)
    assert run["state"] == "ready" and run["exit_code"] == 1
    assert "NameError: name 'totl' is not defined" in run["stderr"]
    explanation = run["explanation"]
    assert explanation["source"] == "registry" and explanation["entry_id"]
    assert explanation["title"] == "A name is used that Python does not know"
    assert "typo" in explanation["text"]
    assert llm_calls(llm) == calls_before
    assert run["limits"]["wall_seconds"] == 10 and "bubblewrap" in run["isolation"]["engine"]

    # An error nobody registered: the language model explains it, and the result says so.
    unusual = submit(api_client, learner, code=UNUSUAL)
    run = finished(api_client, learner, unusual.json()["id"], runner)
    assert "FluxCapacitorMisaligned" in run["stderr"]
    assert run["explanation"]["source"] == "llm" and run["explanation"]["entry_id"] is None
    assert run["explanation"]["text"]
    assert llm_calls(llm) > calls_before

    # A run that works has nothing to explain; the quota of three is then spent.
    ok = finished(
        api_client, learner, submit(api_client, learner, code="print(6 * 7)").json()["id"], runner
    )
    assert ok["exit_code"] == 0 and ok["stdout"] == "42\n" and ok["explanation"] is None
    spent = submit(api_client, learner, code="print(1)")
    assert spent.status_code == 429 and spent.json()["code"] == "runs.quota"
    assert int(spent.headers["Retry-After"]) > 0

    # The teacher sees the hit, and adds an entry of the tenant's own, matched from now on.
    patterns = api_client.get(
        "/api/v1/admin/error-patterns", params={"language": "python"}, headers=tenant_a.headers
    ).json()
    name_entry = next(p for p in patterns if p["id"] == explanation["entry_id"])
    assert name_entry["hits"] == 1 and name_entry["shared"]
    assert len([p for p in patterns if p["shared"]]) >= 20
    own = api_client.post(
        "/api/v1/admin/error-patterns",
        json={
            "error_type": "FluxCapacitorMisaligned",
            "message_regex": r"gigawatts?$",
            "title": "Time travel needs 1.21 gigawatts",
            "explanation": "Our exercise 7 raises this on purpose until the capacitor is fixed.",
            "hint": "Read exercise 7 again.",
        },
        headers=tenant_a.headers,
    )
    assert own.status_code == 201, own.text
    again = finished(
        api_client, tenant_a, submit(api_client, tenant_a, code=UNUSUAL).json()["id"], runner
    )
    assert again["explanation"]["source"] == "registry"
    assert again["explanation"]["entry_id"] == own.json()["id"]
    assert not again["explanation"]["shared"]
    actions = {
        e["action"] for e in api_client.get("/api/v1/admin/audit", headers=tenant_a.headers).json()
    }
    assert "runs.error_pattern.create" in actions

    # Nobody else reads the learner's run: another tenant, or a classmate.
    for other in (tenant_b, classmate):
        answer = api_client.get(f"/api/v1/runs/{created.json()['id']}", headers=other.headers)
        assert answer.status_code == 404
    # The tenant's admin does.
    assert (
        api_client.get(f"/api/v1/runs/{created.json()['id']}", headers=tenant_a.headers).status_code
        == 200
    )


def _zip(entries: dict[str, bytes], symlink: str | None = None) -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.create_system = 3
            info.external_attr = 0o120777 << 16
            archive.writestr(info, "/etc/passwd")
    return base64.b64encode(buffer.getvalue()).decode()


def test_hostile_submissions_and_admin_calls_get_a_clear_4xx(
    api_client: TestClient, tenant_a: Account, tenant_b: Account
) -> None:
    admin = tenant_a
    cases: list[tuple[dict[str, Any], int]] = [
        ({"code": "print('a\x00b')"}, 422),
        ({"code": "x" * (300 * 1024)}, 422),
        ({"code": "x" * (5 * 1024 * 1024)}, 413),
        ({}, 422),
        ({"code": "print(1)", "files_zip": _zip({"main.py": b"print(1)"})}, 422),
        ({"files_zip": "not base64!!"}, 422),
        ({"files_zip": _zip({"main.py": b"", "../escape.py": b"x"})}, 422),
        ({"files_zip": _zip({"main.py": b""}, symlink="link.py")}, 422),
        ({"files_zip": _zip({"helper.py": b""})}, 422),
        ({"files_zip": base64.b64encode(b"PK\x03\x04 truncated").decode()}, 422),
        ({"code": "print(1)", "args": ["a\x00"]}, 422),
        ({"code": "print(1)", "language": "cobol"}, 422),
        ({"code": "print(1)", "language": "Py thon"}, 422),
    ]
    for body, status in cases:
        answer = api_client.post(
            "/api/v1/runs", json={"language": "python", **body}, headers=admin.headers
        )
        assert answer.status_code == status, (str(body)[:80], answer.status_code, answer.text[:300])

    accepted = submit(
        api_client, admin, files_zip=_zip({"main.py": b"import util", "util.py": b""})
    )
    assert accepted.status_code == 202, accepted.text
    run_id = accepted.json()["id"]
    assert api_client.get(f"/api/v1/runs/{run_id}", headers=tenant_b.headers).status_code == 404
    assert api_client.get(f"/api/v1/runs/{uuid.uuid4()}", headers=admin.headers).status_code == 404
    assert api_client.get("/api/v1/runs/not-a-uuid", headers=admin.headers).status_code == 422

    viewer = create_user(api_client, admin, Role.VIEWER)
    assert api_client.get("/api/v1/admin/error-patterns", headers=viewer.headers).status_code == 403
    put = {"subject_id": str(viewer.user_id)}
    assert (
        api_client.put("/api/v1/admin/run-access", json=put, headers=viewer.headers).status_code
        == 403
    )
    # Another tenant's user cannot be put on this tenant's list.
    foreign = {"subject_id": str(tenant_b.user_id)}
    assert (
        api_client.put("/api/v1/admin/run-access", json=foreign, headers=admin.headers).status_code
        == 404
    )

    shared = api_client.get("/api/v1/admin/error-patterns", headers=admin.headers).json()[0]
    assert shared["shared"]
    patch = api_client.patch(
        f"/api/v1/admin/error-patterns/{shared['id']}",
        json={"title": "mine now"},
        headers=admin.headers,
    )
    assert patch.status_code == 404  # the shared defaults are read-only
    base = {"title": "t", "explanation": "e"}
    for bad in ({"message_regex": "(unclosed"}, {"title": "a\x00"}, {"language": "cobol"}):
        answer = api_client.post(
            "/api/v1/admin/error-patterns", json={**base, **bad}, headers=admin.headers
        )
        assert answer.status_code == 422, (bad, answer.text)
    created = api_client.post("/api/v1/admin/error-patterns", json=base, headers=admin.headers)
    assert created.status_code == 201
    mine = created.json()["id"]
    assert (
        api_client.get(f"/api/v1/admin/error-patterns/{mine}", headers=tenant_b.headers).status_code
        == 404
    )
    assert (
        api_client.delete(
            f"/api/v1/admin/error-patterns/{mine}", headers=tenant_b.headers
        ).status_code
        == 404
    )
    assert (
        api_client.delete(f"/api/v1/admin/error-patterns/{mine}", headers=admin.headers).status_code
        == 204
    )


def test_a_host_without_a_sandbox_refuses_the_run_with_the_reason_and_never_runs_it(
    api_client: TestClient, tenant_a: Account, store_overrides: dict[str, Any], tmp_path: Path
) -> None:
    """The job runner's own path (claim, run, reason, fail) on a worker whose host cannot
    make a box: the run ends failed with ``sandbox.unavailable`` at the first attempt."""
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').write('ran unsandboxed')"
    created = submit(api_client, tenant_a, code=code)
    assert created.status_code == 202, created.text
    settings = WorkerSettings(
        **store_overrides,
        sandbox=SandboxSettings(bwrap_path="/nonexistent/bwrap"),
        job_heartbeat_seconds=0.5,
    )
    rt = WorkerRuntime(settings=settings, celery=create_celery(settings))
    try:
        job_id = uuid.UUID(created.json()["job_id"])
        ended = run_job(None, rt, RunHandler(), job_id)  # type: ignore[arg-type]
    finally:
        rt.cancels.stop()
        rt.keeper.stop()
        rt.redis.close()
        rt.session_factory.kw["bind"].dispose()
    assert ended == "failed"
    run = api_client.get(f"/api/v1/runs/{created.json()['id']}", headers=tenant_a.headers).json()
    assert run["state"] == "failed" and run["error"] == "sandbox.unavailable"
    assert "bubblewrap is not installed" in run["error_message"]
    assert run["exit_code"] is None and run["stdout"] is None
    assert not marker.exists()
    unknown = RunHandler().reason(RunFailed("run.language", "this installation does not run x"))
    assert unknown is not None and unknown.permanent
