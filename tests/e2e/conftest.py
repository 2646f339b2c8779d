"""A whole Haven on loopback: the emb and llm services and the all-in-one API + worker process,
on the test PostgreSQL, Redis db 15, RabbitMQ vhost haven_test and a moto S3 endpoint.

The llm service serves the tiny random-weight GGUF (published through the registry like any
model) with one slot and a queue of one, so a test can fill it; the tiny model never ends an
answer by itself, so an answer is as long as the request asks."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker

from haven.db.engine import make_engine, make_session_factory
from haven.queueing import DEAD_QUEUE_NAME, QUEUES, create_celery
from haven.settings import StoreSettings
from models.defaults import publish_default_embedding
from models.store import registry_from_settings
from tests.fixtures.api import Account, bootstrap_platform_admin, create_tenant_with_admin
from tests.fixtures.processes import ServiceProcess, python_module
from tests.fixtures.services import TEST_BROKER_URL, TEST_REDIS_URL, free_port
from tests.fixtures.tiny_gguf import build_tiny_gguf, publish_tiny_gguf


@dataclass
class Stack:
    base_url: str
    env: dict[str, str]
    api: ServiceProcess
    emb: ServiceProcess
    llm: ServiceProcess
    client: httpx.Client
    session_factory: sessionmaker[Session]
    settings: StoreSettings

    def restart_api(self) -> None:
        self.api.stop()
        self.api.start()

    def purge_queues(self) -> None:
        """Drop leftover task messages of earlier tests (jobs whose rows are gone)."""
        app = create_celery(self.settings)
        with app.connection_for_write() as conn:
            for name in (*QUEUES, DEAD_QUEUE_NAME):
                # A queue not declared yet has nothing to purge.
                with contextlib.suppress(Exception):
                    conn.default_channel.queue_purge(name)


def _env(
    database_url: str, s3_endpoint: str, tmp: Path, emb_port: int, llm_port: int
) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:10]
    return {
        "HAVEN_ENV": "test",
        "HAVEN_LOG_JSON": "true",
        "HAVEN_SECRETS_DIR": "/nonexistent-haven-secrets",
        "HAVEN_DATABASE_URL": database_url,
        "HAVEN_REDIS_URL": TEST_REDIS_URL,
        "HAVEN_BROKER_URL": TEST_BROKER_URL,
        "HAVEN_S3_ENDPOINT": s3_endpoint,
        "HAVEN_S3_BUCKET": f"haven-{suffix}",
        "HAVEN_MODELS_BUCKET": f"models-{suffix}",
        "HAVEN_QDRANT_PATH": str(tmp / "qdrant"),
        "HAVEN_QDRANT_COLLECTION": f"chunks_{suffix}",
        "HAVEN_MODEL_CACHE_DIR": str(tmp / "models"),
        "HAVEN_EMB_URL": f"http://127.0.0.1:{emb_port}",
        "HAVEN_LLM_URL": f"http://127.0.0.1:{llm_port}",
        "HAVEN_LLM_ALIAS": "chat",
        "HAVEN_LLM_SLOTS": "1",
        "HAVEN_LLM_QUEUE": "1",
        "HAVEN_LLM_THREADS": "1",
        "HAVEN_LLM_CTX": "32768",
        "HAVEN_CHAT_HEARTBEAT_SECONDS": "0.5",
        # Above the longest answer a test asks for (the cap bounds every request).
        "HAVEN_CHAT_MAX_ANSWER_TOKENS": "30000",
        "HAVEN_JOB_LEASE_SECONDS": "8",
        "HAVEN_REAPER_INTERVAL_SECONDS": "5",
        "HAVEN_RETRY_BACKOFF_SECONDS": "0.5",
        "HAVEN_RETRY_BACKOFF_MAX_SECONDS": "2",
        "HAVEN_JOB_MAX_ATTEMPTS": "2",
        "HAVEN_WORKER_CONCURRENCY": "2",
        # No nightly backup from the stack's beat (tests run maintenance tasks themselves).
        "HAVEN_MAINTENANCE_SCHEDULED": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest,
    database_url: str,
    s3_endpoint: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("stack")
    emb_port, llm_port, api_port = free_port(), free_port(), free_port()
    env = _env(database_url, s3_endpoint, tmp, emb_port, llm_port)
    # A test module may run its stack with settings of its own (STACK_ENV = {...}).
    env.update(getattr(request.module, "STACK_ENV", {}))
    settings = StoreSettings(
        database_url=database_url,
        s3_endpoint=s3_endpoint,
        s3_bucket=env["HAVEN_S3_BUCKET"],
        models_bucket=env["HAVEN_MODELS_BUCKET"],
        redis_url=TEST_REDIS_URL,
        broker_url=TEST_BROKER_URL,
    )
    registry = registry_from_settings(settings)
    publish_default_embedding(registry)
    publish_tiny_gguf(registry, build_tiny_gguf(tmp / "tiny-gguf"), alias="chat")
    engine = make_engine(settings)
    redis.Redis.from_url(TEST_REDIS_URL).flushdb()

    emb = ServiceProcess(
        "emb",
        python_module(
            "uvicorn",
            "--factory",
            "emb.main:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(emb_port),
        ),
        env,
        f"http://127.0.0.1:{emb_port}/readyz",
        tmp / "emb.log",
    ).start()
    llm = ServiceProcess(
        "llm",
        python_module(
            "uvicorn",
            "--factory",
            "llm.main:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(llm_port),
        ),
        env,
        f"http://127.0.0.1:{llm_port}/readyz",
        tmp / "llm.log",
    ).start()
    api = ServiceProcess(
        "api",
        python_module("devstack.allinone", "--host", "127.0.0.1", "--port", str(api_port)),
        env,
        f"http://127.0.0.1:{api_port}/readyz",
        tmp / "api.log",
    )
    stack = Stack(
        base_url=f"http://127.0.0.1:{api_port}",
        env=env,
        api=api,
        emb=emb,
        llm=llm,
        client=httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=60),
        session_factory=make_session_factory(engine),
        settings=settings,
    )
    stack.purge_queues()
    api.start()
    try:
        yield stack
    finally:
        stack.client.close()
        api.stop()
        llm.stop()
        emb.stop()
        engine.dispose()


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Account:
    return bootstrap_platform_admin(stack.session_factory, stack.client)


@pytest.fixture()
def tenant(stack: Stack, admin: Account) -> Account:
    return create_tenant_with_admin(stack.client, admin)
