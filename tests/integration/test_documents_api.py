"""Accepting documents: what the API answers before any worker runs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from minio.error import S3Error

from api.errors import status_for
from api.main import create_app
from api.settings import ApiSettings
from haven.db.engine import transaction
from haven.db.tables import Role, Upload
from haven.errors import TooLarge
from haven.uploads import sweep_abandoned_uploads
from tests.fixtures.api import (
    Account,
    bootstrap_platform_admin,
    create_tenant_with_admin,
    create_user,
    upload,
)
from tests.fixtures.services import free_port

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


def post_upload(info: dict[str, Any], content: bytes) -> httpx.Response:
    """What a client does with a presigned upload: the form fields, then the file."""
    assert info["method"] == "POST"
    return httpx.post(info["url"], data=info["fields"], files={"file": ("f", content)})


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
    # scoped to the tenant's prefix
    assert upload_info["fields"]["key"].startswith(f"tenant/{tenant_a.tenant_id}/uploads/")

    early = api_client.post(
        f"/api/v1/documents/uploads/{upload_info['upload_id']}/complete", headers=tenant_a.headers
    )
    assert early.status_code == 409  # nothing uploaded yet

    sent = post_upload(upload_info, b"# Big\n\nUploaded straight to the object store.\n")
    assert sent.status_code in (200, 201, 204), sent.text

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
        post_upload(info, b"too late")
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


# --- bad input gets a 4xx, never a 500 --------------------------------------------------------


def _raw_objects(client: TestClient, tenant: Account) -> list[str]:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    prefix = f"tenant/{tenant.tenant_id}/"
    listed = runtime.s3.list_objects(runtime.settings.s3_bucket, prefix=prefix, recursive=True)
    return [o.object_name for o in listed]


def test_a_long_source_id_is_accepted_and_a_too_long_one_leaves_nothing(
    api_client: TestClient, tenant_a: Account
) -> None:
    # 192-500 characters used to overflow the job's idempotency key (a 500, with the object
    # already written).
    long_id = "s" * 500
    first = upload(api_client, tenant_a, b"a source id at the column's limit", source_id=long_id)
    assert first.status_code == 201, first.text
    assert first.json()["document"]["source_id"] == long_id
    second = upload(api_client, tenant_a, b"its second version", source_id=long_id)
    assert (second.status_code, second.json()["version"]) == (201, 2)

    too_long = upload(api_client, tenant_a, b"one character more", source_id="s" * 501)
    assert too_long.status_code == 422
    assert too_long.json()["errors"][0]["field"].endswith("source_id")
    assert len(_raw_objects(api_client, tenant_a)) == 2  # nothing stored for the refused one


def test_an_object_written_for_a_rolled_back_upload_is_removed(
    api_client: TestClient, tenant_a: Account, session_factory: Any
) -> None:
    """The bytes reach the store after the rows are written; if the transaction still rolls
    back (a failure after the upload was accepted), the object goes with it."""
    from api.documents import service
    from api.outbox import JobOutbox
    from haven.auth.principal import Principal

    runtime = api_client.app.state.runtime  # type: ignore[attr-defined]
    principal = Principal(
        subject_id=tenant_a.user_id, tenant_id=tenant_a.tenant_id, role=Role.TENANT_ADMIN
    )
    session = session_factory()
    try:
        docs = service.Documents(
            session, principal, JobOutbox(), runtime.s3, runtime.presigner, runtime.settings
        )
        meta = service.UploadMeta("kept.txt", "text/plain", None, "rolled-back", [])
        with (tmp_file := Path(tempfile.mkdtemp()) / "f").open("wb") as out:
            out.write(b"accepted, then the request failed")
        with tmp_file.open("rb") as stream:
            accepted = service.receive(docs, stream, meta, 1024)
        assert _raw_objects(api_client, tenant_a) == [accepted.version.object_key]
        session.rollback()
    finally:
        session.close()
    assert _raw_objects(api_client, tenant_a) == []
    listed = api_client.get("/api/v1/documents", headers=tenant_a.headers).json()
    assert listed["total"] == 0


def test_delete_then_upload_the_same_bytes_again_makes_a_new_document(
    api_client: TestClient, tenant_a: Account
) -> None:
    first = upload(api_client, tenant_a, b"the handbook, once more", source_id="handbook")
    assert first.status_code == 201
    doc_id = first.json()["document"]["id"]
    assert (
        api_client.delete(f"/api/v1/documents/{doc_id}", headers=tenant_a.headers).status_code
        == 204
    )

    again = upload(api_client, tenant_a, b"the handbook, once more", source_id="handbook")
    assert again.status_code == 201, again.text
    body = again.json()
    assert body["duplicate"] is False
    assert body["document"]["id"] != doc_id
    assert (body["version"], body["job_state"]) == (1, "queued")
    link = api_client.get(
        f"/api/v1/documents/{body['document']['id']}/download", headers=tenant_a.headers
    )
    assert httpx.get(link.json()["url"]).content == b"the handbook, once more"


def test_a_filename_over_500_characters_without_a_title(
    api_client: TestClient, tenant_a: Account
) -> None:
    name = "n" * 600 + ".txt"
    response = upload(api_client, tenant_a, b"a file with a very long name", name=name)
    assert response.status_code == 201, response.text
    title = response.json()["document"]["title"]
    assert title == name[:500]


@pytest.mark.parametrize(
    "fields",
    [{"title": "bad\x00title"}, {"tags": ["ok", "bad\x00tag"]}, {"source_id": "bad\x00source"}],
)
def test_nul_in_upload_fields_is_422(
    api_client: TestClient, tenant_a: Account, fields: dict[str, Any]
) -> None:
    response = upload(api_client, tenant_a, b"some text with a NUL somewhere else", **fields)
    assert response.status_code == 422, response.text
    assert "NUL" in response.text
    assert _raw_objects(api_client, tenant_a) == []


def test_nul_in_a_multipart_filename_is_422(api_client: TestClient, tenant_a: Account) -> None:
    # HTTP clients escape it; a hand-made body carries it as is.
    body = (
        b"--b0undary\r\n"
        b'Content-Disposition: form-data; name="file"; filename="bad\x00name.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\n"
        b"a file whose name has a NUL\r\n"
        b"--b0undary--\r\n"
    )
    response = api_client.post(
        "/api/v1/documents",
        content=body,
        headers={**tenant_a.headers, "Content-Type": "multipart/form-data; boundary=b0undary"},
    )
    assert response.status_code == 422, response.text
    assert "NUL" in response.text
    assert _raw_objects(api_client, tenant_a) == []


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/documents/uploads", {"filename": "x\x00.txt"}),
        ("/api/v1/documents/uploads", {"filename": "x.txt", "title": "t\x00"}),
        ("/api/v1/documents/uploads", {"filename": "x.txt", "tags": ["\x00"]}),
        ("/api/v1/chats", {"title": "chat\x00title"}),
        ("/api/v1/admin/api-keys", {"name": "key\x00name"}),
        ("/api/v1/search", {"query": "find\x00me"}),
    ],
)
def test_nul_in_free_text_is_422(
    api_client: TestClient, tenant_a: Account, path: str, body: dict[str, Any]
) -> None:
    response = api_client.post(path, json=body, headers=tenant_a.headers)
    assert response.status_code == 422, response.text
    assert "NUL" in response.text


def test_nul_in_a_chat_message_is_422(api_client: TestClient, tenant_a: Account) -> None:
    chat = api_client.post("/api/v1/chats", json={}, headers=tenant_a.headers).json()
    response = api_client.post(
        f"/api/v1/chats/{chat['id']}/messages",
        json={"content": "hello\x00there", "rag": False},
        headers={**tenant_a.headers, "Accept": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert "NUL" in response.text


def test_nul_in_a_list_filter_is_422(api_client: TestClient, tenant_a: Account) -> None:
    response = api_client.get("/api/v1/documents?tag=a%00b", headers=tenant_a.headers)
    assert response.status_code == 422, response.text


def _list_routes(client: TestClient) -> list[str]:
    """Every GET route that takes an ``offset``, as the API documents itself."""
    paths = client.app.openapi()["paths"]  # type: ignore[attr-defined]
    return [
        path
        for path, operations in paths.items()
        if any(p["name"] == "offset" for p in operations.get("get", {}).get("parameters", []))
    ]


def test_every_list_route_refuses_an_offset_past_its_bound(
    api_client: TestClient, tenant_a: Account
) -> None:
    chat = api_client.post("/api/v1/chats", json={}, headers=tenant_a.headers).json()
    routes = _list_routes(api_client)
    assert {"/api/v1/documents", "/api/v1/jobs", "/api/v1/chats"} <= set(routes)
    for path in routes:
        url = path.replace("{chat_id}", chat["id"])
        for offset in (2**63, 2**64, 10**30):
            response = api_client.get(f"{url}?offset={offset}", headers=tenant_a.headers)
            assert response.status_code == 422, (path, offset, response.text)
        assert api_client.get(f"{url}?offset=5", headers=tenant_a.headers).status_code == 200


def test_search_with_the_embedding_service_down_is_503_with_retry_after(
    store_overrides: dict[str, Any],
) -> None:
    settings = ApiSettings(**{**store_overrides, "emb_url": f"http://127.0.0.1:{free_port()}"})
    with TestClient(create_app(settings)) as client:
        factory = client.app.state.runtime.session_factory  # type: ignore[attr-defined]
        owner = create_tenant_with_admin(client, bootstrap_platform_admin(factory, client))
        response = client.post("/api/v1/search", json={"query": "leave"}, headers=owner.headers)
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1
    assert response.json()["code"] == "search.embedding_unavailable"


# --- presigned uploads and downloads ----------------------------------------------------------


def _policy(info: dict[str, Any]) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.b64decode(info["fields"]["policy"]))
    return decoded


def test_the_upload_policy_limits_the_key_the_size_and_the_time(
    api_client: TestClient, tenant_a: Account
) -> None:
    info = api_client.post(
        "/api/v1/documents/uploads", json={"filename": "a.pdf"}, headers=tenant_a.headers
    ).json()
    policy = _policy(info)
    conditions = policy["conditions"]
    limit = api_client.app.state.runtime.settings.max_upload_bytes  # type: ignore[attr-defined]
    assert ["content-length-range", 1, limit] in conditions  # the store refuses anything else
    assert info["max_bytes"] == limit
    key = info["fields"]["key"]
    assert ["eq", "$key", key] in conditions  # exactly this object, nothing else of the tenant
    assert key.startswith(f"tenant/{tenant_a.tenant_id}/uploads/")
    expires = datetime.fromisoformat(policy["expiration"].replace("Z", "+00:00"))
    assert abs((expires - datetime.fromisoformat(info["expires_at"])).total_seconds()) < 5
    assert expires - datetime.now(UTC) <= timedelta(seconds=900)  # short-lived


def _sigv4_valid(url: str, host: str, path: str, secret: str, region: str) -> bool:
    """Check a presigned GET's signature the way the store does (AWS SigV4, query form),
    for the ``host`` and ``path`` the store receives."""
    query = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    signature = query.pop("X-Amz-Signature")

    def enc(value: str) -> str:
        return quote(value, safe="-_.~")

    canonical_query = "&".join(f"{enc(k)}={enc(v)}" for k, v in sorted(query.items()))
    canonical = "\n".join(
        ["GET", path, canonical_query, f"host:{host}", "", "host", "UNSIGNED-PAYLOAD"]
    )
    date = query["X-Amz-Date"]
    scope = f"{date[:8]}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = f"AWS4{secret}".encode()
    for part in (date[:8], region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.compare_digest(
        hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), signature
    )


def test_urls_are_signed_for_the_public_host(store_overrides: dict[str, Any]) -> None:
    public = "https://haven.example.org:8443/objects"
    settings = ApiSettings(**{**store_overrides, "s3_public_url": public})
    with TestClient(create_app(settings)) as client:
        factory = client.app.state.runtime.session_factory  # type: ignore[attr-defined]
        owner = create_tenant_with_admin(client, bootstrap_platform_admin(factory, client))
        info = client.post(
            "/api/v1/documents/uploads", json={"filename": "a.txt"}, headers=owner.headers
        ).json()
        document = upload(client, owner, b"signed for the address clients use").json()
        link = client.get(
            f"/api/v1/documents/{document['document']['id']}/download", headers=owner.headers
        ).json()
    assert info["url"] == f"{public}/{settings.s3_bucket}"
    url = link["url"]
    assert url.startswith(f"{public}/{settings.s3_bucket}/tenant/{owner.tenant_id}/raw/")
    # nginx strips /objects; the store sees the rest of the path and the client's Host header.
    path = urlsplit(url).path.removeprefix("/objects")
    secret = settings.s3_secret_key.get_secret_value()
    region = settings.s3_region
    assert _sigv4_valid(url, "haven.example.org:8443", path, secret, region)
    assert not _sigv4_valid(url, settings.s3_endpoint, path, secret, region)  # not internal


def test_open_uploads_are_capped_per_tenant(
    store_overrides: dict[str, Any],
) -> None:
    settings = ApiSettings(**{**store_overrides, "max_open_uploads": 2})
    with TestClient(create_app(settings)) as client:
        factory = client.app.state.runtime.session_factory  # type: ignore[attr-defined]
        admin = bootstrap_platform_admin(factory, client)
        owner, other = (
            create_tenant_with_admin(client, admin),
            create_tenant_with_admin(client, admin),
        )

        def create(who: Account) -> httpx.Response:
            return client.post(
                "/api/v1/documents/uploads", json={"filename": "a.txt"}, headers=who.headers
            )

        first, second = create(owner).json(), create(owner).json()
        refused = create(owner)
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["Retry-After"]) <= 900
        assert refused.json()["code"] == "upload.too_many_open"
        assert create(other).status_code == 201  # another tenant has places of its own

        # A completed upload frees its place.
        assert post_upload(first, b"the first one, completed").status_code < 300
        done = client.post(
            f"/api/v1/documents/uploads/{first['upload_id']}/complete", headers=owner.headers
        )
        assert done.status_code == 201
        assert create(owner).status_code == 201
        assert second["upload_id"]


def _expire(factory: Any, upload_id: str, ago: timedelta) -> None:
    with transaction(factory) as session:
        session.get(Upload, uuid.UUID(upload_id)).expires_at = datetime.now(UTC) - ago  # type: ignore[union-attr]


def test_abandoned_uploads_are_swept(api_client: TestClient, tenant_a: Account) -> None:
    runtime = api_client.app.state.runtime  # type: ignore[attr-defined]
    factory, bucket = runtime.session_factory, runtime.settings.s3_bucket

    def create() -> dict[str, Any]:
        return dict(
            api_client.post(
                "/api/v1/documents/uploads", json={"filename": "a.txt"}, headers=tenant_a.headers
            ).json()
        )

    sent_never_completed, never_sent, fresh, recently_expired = (create() for _ in range(4))
    assert post_upload(sent_never_completed, b"abandoned bytes").status_code < 300
    assert post_upload(fresh, b"still being uploaded").status_code < 300
    _expire(factory, sent_never_completed["upload_id"], timedelta(hours=2))
    _expire(factory, never_sent["upload_id"], timedelta(hours=2))
    _expire(factory, recently_expired["upload_id"], timedelta(minutes=5))

    with transaction(factory) as session:
        removed = sweep_abandoned_uploads(session, runtime.s3, bucket, grace=timedelta(hours=1))
    assert removed == 2
    with transaction(factory) as session:
        left = {str(u.id) for u in session.query(Upload).filter_by(tenant_id=tenant_a.tenant_id)}
    assert left == {fresh["upload_id"], recently_expired["upload_id"]}
    with pytest.raises(S3Error, match="NoSuchKey"):
        runtime.s3.stat_object(bucket, sent_never_completed["fields"]["key"])
    assert runtime.s3.stat_object(bucket, fresh["fields"]["key"]).size == len(
        b"still being uploaded"
    )


def test_an_uploaded_object_over_the_limit_is_refused_before_it_is_read(
    store_overrides: dict[str, Any],
) -> None:
    # moto does not apply the POST policy, which a real store does: Haven's own check is what
    # is left to show, a stat before any byte is downloaded.
    settings = ApiSettings(**{**store_overrides, "max_upload_bytes": 1024})
    with TestClient(create_app(settings)) as client:
        factory = client.app.state.runtime.session_factory  # type: ignore[attr-defined]
        owner = create_tenant_with_admin(client, bootstrap_platform_admin(factory, client))
        info = client.post(
            "/api/v1/documents/uploads", json={"filename": "big.txt"}, headers=owner.headers
        ).json()
        assert post_upload(info, b"x" * 4096).status_code < 300
        response = client.post(
            f"/api/v1/documents/uploads/{info['upload_id']}/complete", headers=owner.headers
        )
        assert response.status_code == 413
        assert response.json()["limit"] == 1024
        assert client.get("/api/v1/documents", headers=owner.headers).json()["total"] == 0
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        with pytest.raises(S3Error, match="NoSuchKey"):  # the oversized object is gone
            runtime.s3.stat_object(settings.s3_bucket, info["fields"]["key"])


def test_an_object_replaced_by_a_larger_one_after_the_stat_is_refused(
    api_client: TestClient, tenant_a: Account, session_factory: Any
) -> None:
    from api.documents import service
    from api.outbox import JobOutbox
    from haven.auth.principal import Principal

    runtime = api_client.app.state.runtime  # type: ignore[attr-defined]
    bucket = runtime.settings.s3_bucket
    info = api_client.post(
        "/api/v1/documents/uploads", json={"filename": "a.txt"}, headers=tenant_a.headers
    ).json()
    key = info["fields"]["key"]
    assert post_upload(info, b"small and harmless").status_code < 300
    measured = runtime.s3.stat_object(bucket, key).size  # what `complete` checks first
    # ... and between that stat and the download, the client sends a bigger file.
    assert post_upload(info, b"y" * 100_000).status_code < 300
    principal = Principal(
        subject_id=tenant_a.user_id, tenant_id=tenant_a.tenant_id, role=Role.TENANT_ADMIN
    )
    session = session_factory()
    try:
        docs = service.Documents(
            session, principal, JobOutbox(), runtime.s3, runtime.presigner, runtime.settings
        )
        meta = service.UploadMeta("a.txt", None, None, None, [])
        with pytest.raises(TooLarge) as refused:
            service.receive_object(docs, key, meta, measured)
        session.rollback()
    finally:
        session.close()
    assert status_for(refused.value) == 413
    assert refused.value.code == "upload.changed"
    assert api_client.get("/api/v1/documents", headers=tenant_a.headers).json()["total"] == 0


def test_downloads_are_attachments_with_a_safe_name(
    api_client: TestClient, tenant_a: Account
) -> None:
    page = b"<html><body><script>alert(document.cookie)</script>Hi</body></html>"
    body = upload(
        api_client, tenant_a, page, name="page.html", title='Q3 "report" \u00e9t\u00e9\r\nX: y'
    ).json()
    assert body["document"]["mime"] == "text/html"
    link = api_client.get(
        f"/api/v1/documents/{body['document']['id']}/download", headers=tenant_a.headers
    ).json()
    query = dict(parse_qsl(urlsplit(link["url"]).query))
    disposition = query["response-content-disposition"]
    assert disposition.startswith("attachment; ")
    assert 'filename="Q3 _report_ _t___X: y.html"' in disposition  # ASCII, no quote, no CR/LF
    assert "filename*=UTF-8''Q3%20%22report%22%20%C3%A9t%C3%A9%0D%0AX%3A%20y.html" in disposition
    # HTML is never served as a page, even by a store that ignores the disposition.
    assert query["response-content-type"] == "application/octet-stream"
    got = httpx.get(link["url"])
    assert got.content == page
    assert got.headers["content-disposition"] == disposition
