"""Every operation of the OpenAPI schema, fuzzed with schemathesis against the real API (uvicorn
on loopback, real PostgreSQL, Redis, RabbitMQ, moto S3 and embedded Qdrant): no input gets a
500.

The caller is a tenant admin, so the handlers behind the role checks are reached. Id routes get
real ids: a user, an API key, a document and its job, an upload, a chat and a dead letter are
created first, and each operation's path parameters are fixed to them (random ids only reach a
404). Operations that delete run last, so the others find their objects. Data is generated both
valid and invalid for the schema (negative mode), with a fixed seed.

The model services are not running (their URLs point at closed ports): routes that need them
must answer a designed 503 with Retry-After, which is not a failure; any other 5xx is.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import requests
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from sqlalchemy.orm import Session, sessionmaker

from api.main import create_app
from api.settings import ApiSettings
from haven.db.engine import transaction
from haven.db.tables import DeadLetter, Role
from tests.fixtures.api import (
    Account,
    bootstrap_platform_admin,
    create_tenant_with_admin,
    create_user,
    upload,
)
from tests.fixtures.services import TEST_BROKER_URL, TEST_REDIS_URL, free_port, wait_http

pytestmark = pytest.mark.slow

EXAMPLES_PER_MODE = 12
# Routes whose 503 is their designed answer without Retry-After: readiness says what is down.
PLAIN_503 = {"/readyz"}


@dataclass
class World:
    url: str
    admin: Account
    ids: dict[str, str]
    factory: sessionmaker[Session]
    failures: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def world(
    database_url: str, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    api_settings = ApiSettings(
        env="test",
        log_json=False,
        database_url=database_url,
        redis_url=TEST_REDIS_URL,
        broker_url=TEST_BROKER_URL,
        s3_endpoint=s3_endpoint,
        s3_bucket=f"haven-{uuid.uuid4().hex[:12]}",
        models_bucket=f"models-{uuid.uuid4().hex[:12]}",
        qdrant_path=tmp_path_factory.mktemp("fuzz") / "qdrant",
        emb_url=f"http://127.0.0.1:{free_port()}",
        llm_url=f"http://127.0.0.1:{free_port()}",
    )
    app = create_app(api_settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, ws="none", log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz")
        factory: sessionmaker[Session] = app.state.runtime.session_factory
        with httpx.Client(base_url=url, timeout=30) as client:
            platform = bootstrap_platform_admin(factory, client)  # type: ignore[arg-type]
            admin = create_tenant_with_admin(client, platform)  # type: ignore[arg-type]
            ids = _objects(client, factory, admin)
        yield World(url, admin, ids, factory)
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def _objects(
    client: httpx.Client, factory: sessionmaker[Session], admin: Account
) -> dict[str, str]:
    """One real object per kind of id a path can take, the tenant admin's own."""
    victim = create_user(client, admin, Role.VIEWER)  # type: ignore[arg-type]
    key = client.post("/api/v1/admin/api-keys", json={"name": "fuzz"}, headers=admin.headers)
    document = upload(client, admin, b"Fuzzing reaches the handlers.\n")  # type: ignore[arg-type]
    presigned = client.post(
        "/api/v1/documents/uploads", json={"filename": "f.txt"}, headers=admin.headers
    )
    chat = client.post("/api/v1/chats", json={"title": "fuzz"}, headers=admin.headers)
    for response in (key, document, presigned, chat):
        assert response.status_code in (200, 201), response.text
    job_id = document.json()["job_id"]
    with transaction(factory) as session:
        letter = DeadLetter(
            tenant_id=admin.tenant_id,
            job_id=uuid.UUID(job_id),
            message_id=str(uuid.uuid4()),
            task="ingest.document",
            queue="ingest",
            reason="fuzz",
        )
        session.add(letter)
        session.flush()
        letter_id = str(letter.id)
    return {
        # Never the caller itself: disabling or deleting it would end the run.
        "user_id": str(victim.user_id),
        "key_id": key.json()["id"],
        "document_id": document.json()["document"]["id"],
        "job_id": job_id,
        "upload_id": presigned.json()["upload_id"],
        "chat_id": chat.json()["id"],
        "dead_letter_id": letter_id,
    }


def _operations(world: World) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{world.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    # Deletes last, so that the other operations still find the objects they are given.
    return sorted(operations, key=lambda op: (op.method.upper() == "DELETE", op.label))


def _is_failure(path: str, response: Any) -> bool:
    status = int(response.status_code)
    designed = status == 503 and (response.headers.get("retry-after") or path in PLAIN_503)
    return status >= 500 and not designed


def _fuzz(world: World, operation: Any, mode: GenerationMode, session: requests.Session) -> None:
    auth = {"Authorization": f"Bearer {world.admin.token}"}
    names = {p.name for p in operation.path_parameters}
    fixed = {name: world.ids[name] for name in names if name in world.ids}
    strategy = operation.as_strategy(generation_mode=mode, path_parameters=fixed or None)

    @settings(
        max_examples=EXAMPLES_PER_MODE,
        derandomize=True,  # the fixed seed: the same cases on every run
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        response = case.call(base_url=world.url, session=session, headers=auth, timeout=30)
        if _is_failure(operation.path, response):
            world.failures.append(
                f"{operation.label} [{mode.value}] -> {response.status_code}: "
                f"{case.as_curl_command(headers=auth)}"
            )

    try:
        run()
    except Unsatisfiable:
        # Nothing of the operation can be made invalid (no parameters, no body): negative
        # mode has no case to send, and positive mode covered it.
        assert mode is GenerationMode.NEGATIVE, operation.label


def test_no_input_gets_a_500(world: World) -> None:
    operations = _operations(world)
    assert len(operations) >= 30  # the whole API, not a subset
    with requests.Session() as session:
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _fuzz(world, operation, mode, session)
    assert not world.failures, "\n".join(world.failures)
