"""Sign-in throttling: a burst of 200 wrong passwords is cut off with 429 + Retry-After after a
few tries, while another user's search (real emb service, real Qdrant) answers normally
throughout, and the password checks never hold the database slots the others need."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings
from haven.db.tables import Role
from haven.settings import StoreSettings
from models.defaults import publish_default_embedding
from models.store import registry_from_settings
from tests.fixtures.api import (
    PASSWORD,
    Account,
    bootstrap_platform_admin,
    create_tenant_with_admin,
    create_user,
    login,
)
from tests.fixtures.processes import ServiceProcess, python_module
from tests.fixtures.services import TEST_REDIS_URL, free_port

BURST = 200
PER_USERNAME = 10
PER_ADDRESS = 60


@pytest.fixture(scope="module")
def emb_url(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real embedding service, as a process on loopback."""
    tmp = tmp_path_factory.mktemp("emb")
    bucket = f"models-{uuid.uuid4().hex[:12]}"
    registry = registry_from_settings(
        StoreSettings(env="test", s3_endpoint=s3_endpoint, models_bucket=bucket)
    )
    publish_default_embedding(registry)
    port = free_port()
    env = {
        "HAVEN_ENV": "test",
        "HAVEN_SECRETS_DIR": "/nonexistent-haven-secrets",
        "HAVEN_S3_ENDPOINT": s3_endpoint,
        "HAVEN_MODELS_BUCKET": bucket,
        "HAVEN_MODEL_CACHE_DIR": str(tmp / "models"),
        "HAVEN_EMB_REPLICAS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    emb = ServiceProcess(
        "emb",
        python_module(
            "uvicorn",
            "--factory",
            "emb.main:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ),
        env,
        f"http://127.0.0.1:{port}/readyz",
        tmp / "emb.log",
    ).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        emb.stop()


@pytest.fixture()
def client(
    store_overrides: dict[str, Any], emb_url: str, redis_client: Any
) -> Iterator[TestClient]:
    settings = ApiSettings(
        **{
            **store_overrides,
            "emb_url": emb_url,
            "redis_url": TEST_REDIS_URL,
            "signin_failures_per_username": PER_USERNAME,
            "signin_attempts_per_address": PER_ADDRESS,
            # Few database slots: a password check holding one would starve the searches.
            "database_pool_size": 2,
            "database_max_overflow": 1,
        }
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture()
def admin(client: TestClient) -> Account:
    factory = client.app.state.runtime.session_factory  # type: ignore[attr-defined]
    return create_tenant_with_admin(client, bootstrap_platform_admin(factory, client))


def _guess(client: TestClient, username: str, n: int) -> Any:
    return client.post("/api/v1/auth/token", data={"username": username, "password": f"guess-{n}"})


def _search(client: TestClient, who: Account) -> int:
    response = client.post("/api/v1/search", json={"query": "leave policy"}, headers=who.headers)
    return response.status_code


def test_a_password_guessing_burst_is_throttled_while_others_search(
    client: TestClient, admin: Account
) -> None:
    victim = create_user(client, admin, Role.VIEWER)
    reader = create_user(client, admin, Role.VIEWER)
    assert _search(client, reader) == 200

    with ThreadPoolExecutor(max_workers=16) as pool:
        guesses = [pool.submit(_guess, client, victim.username, n) for n in range(BURST)]
        searches = [pool.submit(_search, client, reader) for _ in range(20)]
        answers = [g.result() for g in guesses]
        searched = [s.result() for s in searches]

    statuses = [a.status_code for a in answers]
    assert set(statuses) == {401, 429}
    assert statuses.count(401) <= PER_USERNAME  # only this many passwords were ever checked
    throttled = [a for a in answers if a.status_code == 429]
    assert all(int(a.headers["Retry-After"]) >= 1 for a in throttled)
    assert throttled[0].json()["code"] == "signin.throttled"
    assert searched == [200] * 20  # the other user was served throughout

    # The victim's own, right password is throttled too while the window lasts (the
    # attacker does not learn it is right); another user signs in as usual.
    locked = client.post(
        "/api/v1/auth/token", data={"username": victim.username, "password": PASSWORD}
    )
    assert locked.status_code == 429
    assert login(client, reader.username)


def test_many_usernames_from_one_address_are_throttled_too(
    client: TestClient, admin: Account
) -> None:
    answers = [_guess(client, f"nobody-{n}@x", n) for n in range(PER_ADDRESS + 5)]
    statuses = [a.status_code for a in answers]
    assert statuses[:PER_ADDRESS] == [401] * PER_ADDRESS
    assert statuses[PER_ADDRESS:] == [429] * 5
    assert "Retry-After" in answers[-1].headers


def test_a_successful_sign_in_clears_the_usernames_failures(
    client: TestClient, admin: Account
) -> None:
    user = create_user(client, admin, Role.VIEWER)
    for n in range(PER_USERNAME - 1):
        assert _guess(client, user.username, n).status_code == 401
    assert login(client, user.username)
    for n in range(PER_USERNAME - 1):
        assert _guess(client, user.username, n).status_code == 401
    assert login(client, user.username)
