"""Shared fixtures. Every test talks to real services; see tests/fixtures/services.py."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from haven.settings import StoreSettings
from tests.fixtures.services import (
    TEST_BROKER_URL,
    TEST_REDIS_URL,
    drop_database,
    migrated_database,
    start_moto,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# No test may read the machine's /run/secrets.
os.environ["HAVEN_SECRETS_DIR"] = "/nonexistent-haven-secrets"


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh database migrated to head, shared by the session, dropped after it."""
    name = f"haven_test_{os.getpid()}"
    yield migrated_database(name)
    drop_database(name)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3 endpoint (moto's server) on loopback, as ``host:port``."""
    yield from start_moto(tmp_path_factory.mktemp("moto"))


@pytest.fixture()
def store_overrides(database_url: str, s3_endpoint: str, tmp_path: Path) -> dict[str, Any]:
    """Settings values pointing every store at the test services. Each test gets its own
    S3 bucket and vector-store folder."""
    return {
        "env": "test",
        "log_json": False,
        "database_url": database_url,
        "redis_url": TEST_REDIS_URL,
        "broker_url": TEST_BROKER_URL,
        "s3_endpoint": s3_endpoint,
        "s3_bucket": f"haven-{uuid.uuid4().hex[:12]}",
        "models_bucket": f"models-{uuid.uuid4().hex[:12]}",
        "qdrant_path": tmp_path / "qdrant",
    }


@pytest.fixture()
def store_settings(store_overrides: dict[str, Any]) -> StoreSettings:
    return StoreSettings(**store_overrides)


@pytest.fixture()
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()
