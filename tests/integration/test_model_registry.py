"""The model registry and the local cache against a real S3 endpoint (moto's server)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from minio import Minio
from typer.testing import CliRunner

from haven.cli import app as haven_cli
from haven.settings import StoreSettings
from models.defaults import DEFAULT_EMBED_ALIAS, publish_default_embedding
from models.loader import ModelCache, ModelIntegrityError
from models.registry import (
    AliasNotFound,
    ModelNotFound,
    ModelRegistry,
    NothingToRollBack,
    VersionConflict,
)
from models.store import StoreUnavailable, registry_from_settings
from tests.fixtures.services import free_port


class RecordingClient(Minio):
    """The real client, remembering which objects were written and read, in order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writes: list[str] = []
        self.reads: list[str] = []
        self.fail_on: str | None = None

    def put_object(self, bucket_name: str, object_name: str, *args: Any, **kw: Any) -> Any:
        # fput_object uploads through put_object too.
        if self.fail_on is not None and object_name.endswith(self.fail_on):
            raise ConnectionError("store went away mid-upload")
        self.writes.append(object_name)
        return super().put_object(bucket_name, object_name, *args, **kw)

    def get_object(self, bucket_name: str, object_name: str, *args: Any, **kw: Any) -> Any:
        self.reads.append(object_name)
        return super().get_object(bucket_name, object_name, *args, **kw)


@pytest.fixture()
def client(store_settings: StoreSettings) -> RecordingClient:
    return RecordingClient(
        store_settings.s3_endpoint,
        access_key=store_settings.s3_access_key,
        secret_key=store_settings.s3_secret_key.get_secret_value(),
        secure=False,
        region=store_settings.s3_region,
    )


@pytest.fixture()
def registry(store_settings: StoreSettings, client: RecordingClient) -> ModelRegistry:
    registry_from_settings(store_settings)  # creates the bucket
    return ModelRegistry(client, store_settings.models_bucket)


def make_model(root: Path, marker: str) -> Path:
    """A small two-file 'model' folder whose content depends on ``marker``."""
    root.mkdir(parents=True)
    (root / "weights.bin").write_bytes(marker.encode() * 1000)
    (root / "sub").mkdir()
    (root / "sub" / "config.json").write_text(json.dumps({"marker": marker}))
    return root


def publish(registry: ModelRegistry, folder: Path, version: str, alias: str | None = "m") -> Any:
    return registry.publish(
        folder, name="toy", version=version, type="embed", format="gguf", alias=alias
    )


def overwrite(client: Minio, bucket: str, key: str, data: bytes) -> None:
    client.put_object(bucket, key, io.BytesIO(data), len(data))


def test_publish_uploads_every_file_and_writes_the_manifest_last(
    registry: ModelRegistry, client: RecordingClient, tmp_path: Path
) -> None:
    manifest = publish(registry, make_model(tmp_path / "m", "a"), "1", alias=None)
    assert client.writes == ["toy/1/sub/config.json", "toy/1/weights.bin", "toy/1/manifest.json"]
    assert {f.path for f in manifest.files} == {"sub/config.json", "weights.bin"}
    assert manifest.total_size == sum(f.size for f in manifest.files)
    assert registry.manifest("toy", "1") == manifest


def test_an_interrupted_publish_leaves_no_version_behind(
    registry: ModelRegistry, client: RecordingClient, tmp_path: Path
) -> None:
    client.fail_on = "weights.bin"
    with pytest.raises(ConnectionError):
        publish(registry, make_model(tmp_path / "m", "a"), "1")
    with pytest.raises(ModelNotFound):
        registry.manifest("toy", "1")
    assert registry.list() == []
    with pytest.raises(AliasNotFound):
        registry.resolve("m")


def test_republishing_is_a_no_op_and_changing_a_version_is_refused(
    registry: ModelRegistry, client: RecordingClient, tmp_path: Path
) -> None:
    folder = make_model(tmp_path / "m", "a")
    first = publish(registry, folder, "1")
    client.writes.clear()
    assert publish(registry, folder, "1") == first
    assert client.writes == []  # same checksums: nothing uploaded, alias unchanged
    with pytest.raises(VersionConflict):
        publish(registry, make_model(tmp_path / "other", "b"), "1")


def test_alias_moves_and_rollback_restores_the_previous_version(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    publish(registry, make_model(tmp_path / "v1", "a"), "1")
    publish(registry, make_model(tmp_path / "v2", "b"), "2")
    publish(registry, make_model(tmp_path / "v3", "c"), "3", alias=None)
    assert registry.resolve("m").version == "2"
    registry.set_alias("m", "toy", "3")
    assert registry.resolve("m").version == "3"
    assert registry.rollback("m").version == "2"
    assert registry.rollback("m").version == "1"
    assert registry.resolve("m").version == "1"
    with pytest.raises(NothingToRollBack):
        registry.rollback("m")
    with pytest.raises(ModelNotFound):
        registry.set_alias("m", "toy", "9")
    with pytest.raises(AliasNotFound):
        registry.resolve("nope")
    assert [m.version for m in registry.list()] == ["1", "2", "3"]


def test_cache_downloads_once_and_reuses_a_verified_copy(
    registry: ModelRegistry, client: RecordingClient, tmp_path: Path
) -> None:
    publish(registry, make_model(tmp_path / "m", "a"), "1")
    cache = ModelCache(registry, tmp_path / "cache")
    local = cache.fetch("m")
    assert (local.path / "weights.bin").read_bytes() == b"a" * 1000
    client.reads.clear()
    again = cache.fetch("m")
    assert again.path == local.path
    assert not [key for key in client.reads if key.endswith((".bin", "config.json"))]
    assert cache.verify("m").manifest == local.manifest


def test_verify_catches_a_tampered_cache_file_and_fetch_repairs_it(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    publish(registry, make_model(tmp_path / "m", "a"), "1")
    cache = ModelCache(registry, tmp_path / "cache")
    local = cache.fetch("m")
    weights = local.path / "weights.bin"
    data = bytearray(weights.read_bytes())
    data[500] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match=r"weights\.bin") as caught:
        cache.verify("m")
    assert caught.value.path == "weights.bin"
    (local.path / "sub" / "config.json").unlink()
    with pytest.raises(ModelIntegrityError, match=r"sub/config\.json"):
        cache.verify("m")
    repaired = cache.fetch("m")  # the bucket is the source of truth
    assert (repaired.path / "weights.bin").read_bytes() == b"a" * 1000
    cache.verify("m")


def test_a_tampered_object_in_the_bucket_never_reaches_the_cache(
    registry: ModelRegistry, client: RecordingClient, store_settings: StoreSettings, tmp_path: Path
) -> None:
    publish(registry, make_model(tmp_path / "m", "a"), "1")
    overwrite(client, store_settings.models_bucket, "toy/1/weights.bin", b"b" + b"a" * 999)
    cache_dir = tmp_path / "cache"
    with pytest.raises(ModelIntegrityError, match=r"weights\.bin") as caught:
        ModelCache(registry, cache_dir).fetch("m")
    assert caught.value.path == "weights.bin"
    # Nothing half-written where a service would load it.
    assert not (cache_dir / "toy" / "1").exists()
    assert list((cache_dir / "toy").iterdir()) == []
    assert registry.damaged_files(registry.resolve("m")) == ["weights.bin"]

    client.remove_object(store_settings.models_bucket, "toy/1/sub/config.json")
    overwrite(client, store_settings.models_bucket, "toy/1/weights.bin", b"a" * 1000)
    with pytest.raises(ModelIntegrityError, match=r"sub/config\.json.*missing"):
        ModelCache(registry, cache_dir).fetch("m")


def test_unreachable_store_is_retried_with_backoff_then_fails_clearly(
    store_settings: StoreSettings,
) -> None:
    dead = store_settings.model_copy(update={"s3_endpoint": f"127.0.0.1:{free_port()}"})
    delays: list[float] = []
    with pytest.raises(StoreUnavailable, match="unreachable after 4 attempts"):
        registry_from_settings(dead, attempts=4, backoff_seconds=0.1, sleep=delays.append)
    assert delays == [0.1, 0.2, 0.4]


def test_publish_defaults_is_idempotent(registry: ModelRegistry, client: RecordingClient) -> None:
    first = publish_default_embedding(registry)
    assert registry.resolve(DEFAULT_EMBED_ALIAS) == first
    assert first.parameters["dimension"] == 384
    assert first.parameters["max_seq_length"] == 256
    assert "model.safetensors" in {f.path for f in first.files}
    client.writes.clear()
    assert publish_default_embedding(registry) == first
    assert client.writes == []


def test_cli_publish_alias_rollback_list_and_verify(
    store_overrides: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("s3_endpoint", "models_bucket"):
        monkeypatch.setenv(f"HAVEN_{key.upper()}", str(store_overrides[key]))
    monkeypatch.setenv("HAVEN_MODEL_CACHE_DIR", str(tmp_path / "cache"))
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(haven_cli, ["models", *args])
        assert result.exit_code == 0, result.output
        return result.output

    for version, marker in (("1", "a"), ("2", "b")):
        folder = make_model(tmp_path / version, marker)
        out = run(
            "publish",
            str(folder),
            "--name",
            "toy",
            "--version",
            version,
            "--type",
            "llm",
            "--format",
            "gguf",
            "--alias",
            "chat",
        )
        assert f"toy/{version}" in out
    assert "aliases=chat" in run("list").splitlines()[1]
    assert "chat -> toy/1" in run("rollback", "chat")
    assert "ok toy/1" in run("verify", "chat")
    assert "chat -> toy/2" in run("alias", "chat", "toy", "2")
    failed = runner.invoke(haven_cli, ["models", "alias", "chat", "toy", "7"])
    assert failed.exit_code == 1
    assert "toy/7 is not published" in failed.output
