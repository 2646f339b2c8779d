"""A multilingual E5-style embedding model through the registry and the embedding service:
the manifest declares its languages and its query/passage prefixes, and emb puts the right
prefix before each text. The model is the tiny random-weight one the tests build."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sentence_transformers import SentenceTransformer

from emb.main import create_app
from emb.settings import EmbSettings
from models.registry import ModelRegistry
from models.store import registry_from_settings
from tests.fixtures.tiny_st import (
    PASSAGE_PREFIX,
    QUERY_PREFIX,
    TINY_ST_NAME,
    build_tiny_sentence_transformer,
)

ALIAS = "multi"
TEXTS = ["Сколько дней длится отпуск?", "The vacation lasts 28 days."]


def emb_settings(s3_endpoint: str, bucket: str, cache: Path, **values: Any) -> EmbSettings:
    return EmbSettings(
        env="test",
        log_json=False,
        s3_endpoint=s3_endpoint,
        models_bucket=bucket,
        model_cache_dir=cache,
        model_store_attempts=2,
        **values,
    )


def wait_until_ready(client: TestClient, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get("/readyz")
        if response.status_code == 200 or response.json()["status"] == "failed":
            return response.status_code
        time.sleep(0.1)
    raise TimeoutError("emb neither became ready nor failed")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sentence_transformer(tmp_path_factory.mktemp("tiny-e5") / "model")


@pytest.fixture(scope="module")
def bucket() -> str:
    return f"models-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def registry(s3_endpoint: str, bucket: str, model_dir: Path) -> ModelRegistry:
    registry = registry_from_settings(emb_settings(s3_endpoint, bucket, Path("unused")))
    # As `haven models publish DIR --param languages=en,ru` gives it: a comma-separated string.
    registry.publish(
        model_dir,
        name=TINY_ST_NAME,
        version="1",
        type="embed",
        alias=ALIAS,
        parameters={"languages": "en,ru"},
    )
    return registry


@pytest.fixture(scope="module")
def client(
    s3_endpoint: str, bucket: str, registry: ModelRegistry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    settings = emb_settings(
        s3_endpoint, bucket, tmp_path_factory.mktemp("cache"), emb_aliases=[ALIAS]
    )
    with TestClient(create_app(settings)) as client:
        assert wait_until_ready(client) == 200
        yield client


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> SentenceTransformer:
    return SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)


def test_the_manifest_declares_languages_and_the_prefixes_the_model_ships(
    registry: ModelRegistry,
) -> None:
    manifest = registry.resolve(ALIAS)
    assert manifest.languages == ["en", "ru"]
    assert (manifest.query_prefix, manifest.passage_prefix) == (QUERY_PREFIX, PASSAGE_PREFIX)


def test_queries_and_passages_are_embedded_with_their_own_prefix(
    client: TestClient, reference: SentenceTransformer
) -> None:
    vectors = {}
    for kind in ("query", "passage", None):
        body = client.post("/embed", json={"texts": TEXTS, "input_type": kind}).json()
        assert body["models"][0]["languages"] == ["en", "ru"]
        assert body["models"][0]["query_prefix"] == QUERY_PREFIX
        assert body["models"][0]["passage_prefix"] == PASSAGE_PREFIX
        vectors[kind] = np.array([item["dense"][ALIAS] for item in body["data"]])
    expected = {
        "query": reference.encode([QUERY_PREFIX + t for t in TEXTS]),
        "passage": reference.encode([PASSAGE_PREFIX + t for t in TEXTS]),
        None: reference.encode(TEXTS),
    }
    for kind, served in vectors.items():
        np.testing.assert_allclose(served, expected[kind], atol=1e-5)
    # The prefix changes what is embedded: a query is not embedded as a passage.
    assert not np.allclose(vectors["query"], vectors["passage"], atol=1e-3)


def test_the_openai_endpoint_takes_the_prefix_when_asked(
    client: TestClient, reference: SentenceTransformer
) -> None:
    body = client.post(
        "/v1/embeddings", json={"input": TEXTS[0], "model": ALIAS, "input_type": "query"}
    ).json()
    np.testing.assert_allclose(
        np.array(body["data"][0]["embedding"]),
        reference.encode([QUERY_PREFIX + TEXTS[0]])[0],
        atol=1e-5,
    )
