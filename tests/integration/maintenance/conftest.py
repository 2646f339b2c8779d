"""Fixtures of the maintenance tests: one emb service (two tiny models) for the package, and
a database of their own, emptied of documents before each test: a re-index and a clean-up
look at every tenant's chunks, so documents left by other tests (whose vectors lived in
their own vector-store folders) would look lost."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete

from api.main import create_app
from api.settings import ApiSettings
from haven.db.engine import transaction
from haven.db.tables import Document, IndexPointer, Upload
from haven.queueing import create_celery
from models.registry import ModelRegistry
from models.store import registry_from_settings
from tests.fixtures.api import bootstrap_platform_admin, create_tenant_with_admin
from tests.fixtures.maintenance_stack import ALIAS, Haven
from tests.fixtures.processes import ServiceProcess, python_module
from tests.fixtures.services import drop_database, free_port, migrated_database
from tests.fixtures.tiny_st import build_tiny_sentence_transformer
from workers.runtime import WorkerRuntime
from workers.settings import WorkerSettings


@pytest.fixture(scope="package")
def database_url() -> Iterator[str]:
    name = f"haven_test_maint_{os.getpid()}"
    yield migrated_database(name)
    drop_database(name)


@pytest.fixture(scope="package")
def models_bucket() -> str:
    return f"models-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="package")
def registry(
    s3_endpoint: str, models_bucket: str, tmp_path_factory: pytest.TempPathFactory
) -> ModelRegistry:
    settings = WorkerSettings(env="test", s3_endpoint=s3_endpoint, models_bucket=models_bucket)
    registry = registry_from_settings(settings)
    root = tmp_path_factory.mktemp("tiny-models")
    for name, hidden, seed in (("tiny-a", 32, 1), ("tiny-b", 48, 2)):
        folder = build_tiny_sentence_transformer(root / name, hidden=hidden, seed=seed)
        registry.publish(folder, name=name, version="1", type="embed")
    return registry


@pytest.fixture(scope="package")
def emb_url(
    s3_endpoint: str,
    models_bucket: str,
    registry: ModelRegistry,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    registry.set_alias(ALIAS, "tiny-a", "1")
    port = free_port()
    tmp = tmp_path_factory.mktemp("emb")
    env = {
        "HAVEN_ENV": "test",
        "HAVEN_LOG_JSON": "true",
        "HAVEN_S3_ENDPOINT": s3_endpoint,
        "HAVEN_MODELS_BUCKET": models_bucket,
        "HAVEN_MODEL_CACHE_DIR": str(tmp / "cache"),
        "HAVEN_MODEL_STORE_ATTEMPTS": "2",
        "HAVEN_EMB_ALIASES": ALIAS,
        "HAVEN_EMB_REPLICAS": "1",
        "HAVEN_EMB_TORCH_THREADS": "1",
    }
    argv = python_module(
        "uvicorn", "--factory", "--host", "127.0.0.1", "--port", str(port), "emb.main:create_app"
    )
    emb = ServiceProcess("emb", argv, env, f"http://127.0.0.1:{port}/readyz", tmp / "emb.log")
    emb.start(timeout=240)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        emb.stop()


@pytest.fixture()
def haven(
    store_overrides: dict[str, Any],
    models_bucket: str,
    emb_url: str,
    registry: ModelRegistry,
    tmp_path: Path,
) -> Iterator[Haven]:
    registry.set_alias(ALIAS, "tiny-a", "1")
    values = {**store_overrides, "models_bucket": models_bucket, "emb_url": emb_url}
    api_settings = ApiSettings(**values, search_alias=ALIAS, index_pointer_cache_seconds=0.2)
    worker_settings = WorkerSettings(
        **values,
        emb_aliases=[ALIAS],
        model_cache_dir=tmp_path / "worker-models",
        index_pointer_cache_seconds=0.2,
        reindex_batch=4,
        reindex_eval_queries=6,
        cleanup_grace_hours=0,
    )
    with TestClient(create_app(api_settings), raise_server_exceptions=False) as client:
        factory = client.app.state.runtime.session_factory  # type: ignore[attr-defined]
        with transaction(factory) as session:  # no documents, uploads or pointer yet
            for table in (Document, Upload, IndexPointer):
                session.execute(delete(table))
        admin = bootstrap_platform_admin(factory, client)
        who = create_tenant_with_admin(client, admin)
        rt = WorkerRuntime(settings=worker_settings, celery=create_celery(worker_settings))
        rt.redis.flushdb()  # this run's Redis db: no answer-cache lists or locks of others
        try:
            yield Haven(client, rt, who)
        finally:
            rt.emb.close()
            rt.redis.close()
            rt.session_factory.kw["bind"].dispose()
