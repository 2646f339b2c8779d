"""The reviews contract as course platforms call it: 202 with a task id, 400 for a blank
commit or a hostile archive, 413 naming the part over its limit (read as it streams, never
held whole), the same submission twice is the same review, and tenants see only their own."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from api.main import create_app
from api.multipart import read_form
from api.settings import ApiSettings
from haven.db.tables import Job, JobKind, Review, Role
from haven.errors import TooLarge
from haven.review_settings import ReviewSettings
from tests.fixtures import review_archives as z
from tests.fixtures.api import Account, create_user

LIMIT = 256 * 1024


@pytest.fixture()
def api_settings(store_overrides: dict[str, Any]) -> ApiSettings:
    return ApiSettings(**store_overrides, review=ReviewSettings(max_archive_bytes=LIMIT))


@pytest.fixture()
def api_client(api_settings: ApiSettings) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings), raise_server_exceptions=False) as client:
        yield client


def submit(
    client: TestClient,
    who: Account,
    *,
    new_zip: bytes | None = None,
    files: dict[str, bytes] | None = None,
    **fields: str,
) -> Any:
    data = {"student_id": "s-1", "assignment_id": "hw-1", "new_commit": "abc123", **fields}
    parts = {
        "new_zip": ("new.zip", z.project_new() if new_zip is None else new_zip, "application/zip")
    }
    for name, content in (files or {}).items():
        parts[name] = (f"{name}.zip", content, "application/zip")
    return client.post("/api/v1/reviews", data=data, files=parts, headers=who.headers)


def count_reviews(factory: sessionmaker[Session], who: Account) -> int:
    stmt = select(func.count()).select_from(Review).where(Review.tenant_id == who.tenant_id)
    with factory() as session:
        return int(session.execute(stmt).scalar_one())


def test_a_submission_is_accepted_once_and_read_back(
    api_client: TestClient, tenant_a: Account, session_factory: sessionmaker[Session]
) -> None:
    response = submit(
        api_client, tenant_a, files={"old_zip": z.project_old(), "logs_zip": z.run_logs()}
    )
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    assert response.json()["status"] == "queued"

    again = submit(
        api_client, tenant_a, files={"old_zip": z.project_old(), "logs_zip": z.run_logs()}
    )
    assert again.status_code == 200
    assert again.json() == {"task_id": task_id, "status": "queued", "duplicate": True}
    # Another commit of the same work is another review.
    other = submit(api_client, tenant_a, new_commit="def456")
    assert other.status_code == 202 and other.json()["task_id"] != task_id

    read = api_client.get(f"/api/v1/reviews/{task_id}", headers=tenant_a.headers).json()
    assert read["student_id"] == "s-1" and read["new_commit"] == "abc123"
    assert read["status"] == "queued" and read["result"] is None
    listed = api_client.get(
        "/api/v1/reviews", params={"student_id": "s-1", "assignment_id": "hw-1"},
        headers=tenant_a.headers,
    ).json()  # fmt: skip
    assert listed["total"] == 2
    with session_factory() as session:
        job = session.execute(select(Job).where(Job.subject_id == task_id)).scalar_one()
        assert job.kind == JobKind.REVIEW


@pytest.mark.parametrize("commit", ["", "   ", "\t\n"])
def test_a_blank_commit_is_400_with_the_reason(
    api_client: TestClient, tenant_a: Account, commit: str
) -> None:
    response = submit(api_client, tenant_a, new_commit=commit)
    assert response.status_code == 400
    assert "new_commit" in response.json()["detail"]


@pytest.mark.parametrize(
    ("archive", "code"),
    [
        (b"this is not a zip", "archive.not_zip"),
        (z.zip_bomb(), "archive.ratio"),
        (z.with_entry("../../etc/cron.d/job.py"), "archive.unsafe_path"),
        (z.with_entry("/abs/path.py"), "archive.unsafe_path"),
    ],
)
def test_hostile_or_wrong_archives_are_400_and_nothing_is_stored(
    api_client: TestClient,
    tenant_a: Account,
    session_factory: sessionmaker[Session],
    archive: bytes,
    code: str,
) -> None:
    response = submit(api_client, tenant_a, new_zip=archive)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == code
    assert response.json()["detail"].startswith("new_zip:")
    assert count_reviews(session_factory, tenant_a) == 0


def test_an_archive_over_the_limit_is_413_naming_the_part(
    api_client: TestClient, tenant_a: Account, session_factory: sessionmaker[Session]
) -> None:
    noise = random.Random(3)
    big = z.zip_of({f"f{i}.txt": noise.randbytes(16384) for i in range(40)})
    assert len(big) > LIMIT
    response = submit(api_client, tenant_a, files={"logs_zip": z.run_logs(), "old_zip": big})
    assert response.status_code == 413
    body = response.json()
    assert body["limit"] == LIMIT and "old_zip" in body["detail"]
    assert count_reviews(session_factory, tenant_a) == 0


def test_the_form_reader_stops_at_the_limit_without_reading_the_rest(tmp_path: Path) -> None:
    boundary = "b0undary"
    read = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal read
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="new_zip"; filename="a.zip"'
            "\r\n\r\n"
        ).encode()
        for _ in range(1000):  # 64 MiB offered
            read += 1
            yield b"\x00" * 65536

    with pytest.raises(TooLarge) as refused:
        asyncio.run(
            read_form(
                body(),
                f"multipart/form-data; boundary={boundary}",
                tmp_path,
                file_limits={"new_zip": LIMIT},
                text_fields=set(),
                text_limit=100,
            )
        )
    assert refused.value.limit == LIMIT
    assert read <= LIMIT // 65536 + 1
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= LIMIT


def test_roles_and_tenants(api_client: TestClient, tenant_a: Account, tenant_b: Account) -> None:
    task_id = submit(api_client, tenant_a).json()["task_id"]
    assert api_client.get(f"/api/v1/reviews/{task_id}", headers=tenant_b.headers).status_code == 404
    assert api_client.get("/api/v1/reviews", headers=tenant_b.headers).json()["total"] == 0
    viewer = create_user(api_client, tenant_a, Role.VIEWER)
    assert submit(api_client, viewer, new_commit="zzz").status_code == 403
    assert api_client.get(f"/api/v1/reviews/{task_id}", headers=viewer.headers).status_code == 200


@pytest.mark.parametrize(
    "fields",
    [
        {"student_id": "s\x00-1"},
        {"assignment_id": "x" * 201},
        {"student_id": ""},
    ],
)
def test_bad_fields_are_400(
    api_client: TestClient, tenant_a: Account, fields: dict[str, str]
) -> None:
    assert submit(api_client, tenant_a, **fields).status_code == 400


def test_malformed_bodies_are_400(api_client: TestClient, tenant_a: Account) -> None:
    for body, content_type in [
        (b"{}", "application/json"),
        (b"--x\r\nbroken", "multipart/form-data; boundary=x"),
        (b"", "multipart/form-data"),
    ]:
        response = api_client.post(
            "/api/v1/reviews",
            content=body,
            headers={**tenant_a.headers, "Content-Type": content_type},
        )
        assert response.status_code == 400, (body, response.text)
    unknown = api_client.post(
        "/api/v1/reviews",
        data={"student_id": "s", "assignment_id": "a", "new_commit": "c", "surprise": "x"},
        files={"new_zip": ("n.zip", z.project_new(), "application/zip")},
        headers=tenant_a.headers,
    )
    assert unknown.status_code == 400
