"""Accepting documents: what the API answers before any worker runs."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from minio.error import S3Error

from api.main import create_app
from api.settings import ApiSettings
from haven.db.tables import Role
from tests.fixtures.api import (
    Account,
    bootstrap_platform_admin,
    create_tenant_with_admin,
    create_user,
    upload,
)

TEXT = b"Haven keeps every document it accepts.\n\nA second paragraph for good measure.\n"


def test_upload_creates_document_version_and_queued_job(
    api_client: TestClient, tenant_a: Account
) -> None:
    response = upload(api_client, tenant_a, TEXT, title="Policy", tags=["hr", "2026"])
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["duplicate"] is False
    assert body["version"] == 1
    assert body["job_state"] == "queued"
    assert body["document"]["tags"] == ["2026", "hr"]
    assert body["document"]["title"] == "Policy"

    job = api_client.get(f"/api/v1/jobs/{body['job_id']}", headers=tenant_a.headers).json()
    assert (job["kind"], job["state"], job["attempts"]) == ("ingest", "queued", 0)
    detail = api_client.get(
        f"/api/v1/documents/{body['document']['id']}", headers=tenant_a.headers
    ).json()
    assert [v["version"] for v in detail["versions"]] == [1]
    assert detail["versions"][0]["size_bytes"] == len(TEXT)

    link = api_client.get(
        f"/api/v1/documents/{body['document']['id']}/download", headers=tenant_a.headers
    ).json()
    assert f"tenant/{tenant_a.tenant_id}/raw/" in link["url"]
    assert httpx.get(link["url"]).content == TEXT  # the stored bytes are the uploaded ones


def test_same_bytes_twice_is_one_document(api_client: TestClient, tenant_a: Account) -> None:
    first = upload(api_client, tenant_a, TEXT + b"dedup").json()
    again = upload(api_client, tenant_a, TEXT + b"dedup", name="copy.txt")
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    assert again.json()["document"]["id"] == first["document"]["id"]
    listed = api_client.get("/api/v1/documents", headers=tenant_a.headers).json()
    assert listed["total"] == 1


def test_new_bytes_under_a_source_id_are_a_new_version(
    api_client: TestClient, tenant_a: Account
) -> None:
    v1 = upload(api_client, tenant_a, b"first text of the handbook", source_id="handbook").json()
    v2 = upload(api_client, tenant_a, b"second text of the handbook", source_id="handbook").json()
    assert v2["document"]["id"] == v1["document"]["id"]
    assert (v1["version"], v2["version"]) == (1, 2)
    assert v2["job_id"] != v1["job_id"]


def test_bad_files_get_clear_4xx(api_client: TestClient, tenant_a: Account) -> None:
    empty = upload(api_client, tenant_a, b"")
    assert empty.status_code == 422
    assert "empty" in empty.json()["detail"]

    exe = upload(api_client, tenant_a, b"MZ\x90\x00\x03binary", name="tool.exe")
    assert exe.status_code == 415
    assert "application/pdf" in exe.json()["detail"]  # lists the supported types

    viewer = create_user(api_client, tenant_a, Role.VIEWER)
    assert upload(api_client, viewer, TEXT).status_code == 403
    assert api_client.get("/api/v1/documents", headers=tenant_a.headers).json()["total"] == 0


def test_file_over_the_limit_is_413(store_overrides: dict[str, Any]) -> None:
    settings = ApiSettings(**{**store_overrides, "max_upload_bytes": 1024})
    with TestClient(create_app(settings)) as client:
        factory = client.app.state.runtime.session_factory  # type: ignore[attr-defined]
        admin = bootstrap_platform_admin(factory, client)
        owner = create_tenant_with_admin(client, admin)
        response = upload(client, owner, b"x" * 4096)
        assert response.status_code == 413
        assert client.get("/api/v1/documents", headers=owner.headers).json()["total"] == 0


def test_presigned_upload_flow(
    api_client: TestClient, tenant_a: Account, tenant_b: Account
) -> None:
    created = api_client.post(
        "/api/v1/documents/uploads",
        json={"filename": "big.md", "tags": ["big"], "source_id": "big-1"},
        headers=tenant_a.headers,
    )
    assert created.status_code == 201
    upload_info = created.json()
    url = upload_info["url"]
    assert f"/tenant/{tenant_a.tenant_id}/uploads/" in url  # scoped to the tenant's prefix
    assert "X-Amz-Expires=900" in url  # short-lived

    early = api_client.post(
        f"/api/v1/documents/uploads/{upload_info['upload_id']}/complete", headers=tenant_a.headers
    )
    assert early.status_code == 409  # nothing uploaded yet

    put = httpx.put(url, content=b"# Big\n\nUploaded straight to the object store.\n")
    assert put.status_code == 200

    foreign = api_client.post(
        f"/api/v1/documents/uploads/{upload_info['upload_id']}/complete", headers=tenant_b.headers
    )
    assert foreign.status_code == 404  # another tenant's upload does not exist for B

    done = api_client.post(
        f"/api/v1/documents/uploads/{upload_info['upload_id']}/complete", headers=tenant_a.headers
    )
    assert done.status_code == 201, done.text
    assert done.json()["document"]["mime"] == "text/markdown"
    assert done.json()["document"]["tags"] == ["big"]
    again = api_client.post(
        f"/api/v1/documents/uploads/{upload_info['upload_id']}/complete", headers=tenant_a.headers
    )
    assert again.status_code == 409


def test_expired_presigned_upload_is_refused(store_overrides: dict[str, Any]) -> None:
    settings = ApiSettings(**{**store_overrides, "presign_ttl_seconds": 1})
    with TestClient(create_app(settings)) as client:
        factory = client.app.state.runtime.session_factory  # type: ignore[attr-defined]
        owner = create_tenant_with_admin(client, bootstrap_platform_admin(factory, client))
        info = client.post(
            "/api/v1/documents/uploads", json={"filename": "late.txt"}, headers=owner.headers
        ).json()
        httpx.put(info["url"], content=b"too late")
        time.sleep(1.5)
        response = client.post(
            f"/api/v1/documents/uploads/{info['upload_id']}/complete", headers=owner.headers
        )
        assert response.status_code == 410
        assert "expired" in response.json()["detail"]


def test_cancel_a_queued_job_and_retry_it(api_client: TestClient, tenant_a: Account) -> None:
    body = upload(api_client, tenant_a, b"a job no worker has picked up yet").json()
    job_url = f"/api/v1/jobs/{body['job_id']}"
    canceled = api_client.post(f"{job_url}/cancel", headers=tenant_a.headers)
    assert canceled.status_code == 200
    assert canceled.json()["state"] == "canceled"
    assert canceled.json()["started_at"] is None
    assert api_client.post(f"{job_url}/cancel", headers=tenant_a.headers).status_code == 409

    retried = api_client.post(f"{job_url}/retry", headers=tenant_a.headers)
    assert retried.status_code == 200
    assert (retried.json()["state"], retried.json()["attempts"]) == ("queued", 0)
    assert api_client.post(f"{job_url}/retry", headers=tenant_a.headers).status_code == 409


def test_delete_document_removes_rows_and_object(api_client: TestClient, tenant_a: Account) -> None:
    body = upload(api_client, tenant_a, b"to be deleted").json()
    doc_url = f"/api/v1/documents/{body['document']['id']}"
    runtime = api_client.app.state.runtime  # type: ignore[attr-defined]
    key = f"tenant/{tenant_a.tenant_id}/raw/"
    stored = [
        o.object_name
        for o in runtime.s3.list_objects(runtime.settings.s3_bucket, prefix=key, recursive=True)
    ]
    assert len(stored) == 1
    assert api_client.delete(doc_url, headers=tenant_a.headers).status_code == 204
    assert api_client.get(doc_url, headers=tenant_a.headers).status_code == 404
    with pytest.raises(S3Error, match="NoSuchKey"):  # the raw object is gone too
        runtime.s3.stat_object(runtime.settings.s3_bucket, stored[0])
    assert api_client.delete(doc_url, headers=tenant_a.headers).status_code == 404
    job = api_client.get(f"/api/v1/jobs/{body['job_id']}", headers=tenant_a.headers).json()
    assert job["state"] == "canceled"


@pytest.mark.parametrize(
    "bad",
    [
        {"query": ""},
        {"query": "   "},
        {"query": "x", "top_k": 0},
        {"query": "x", "top_k": 101},
        {"query": "x", "mode": "magic"},
    ],
)
def test_search_rejects_bad_requests(
    api_client: TestClient, tenant_a: Account, bad: dict[str, Any]
) -> None:
    response = api_client.post("/api/v1/search", json=bad, headers=tenant_a.headers)
    assert response.status_code == 422
