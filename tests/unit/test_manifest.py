"""Manifests are read from the store: unsafe paths and names must never be accepted."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from models.manifest import Manifest, ModelFile, model_files, sha256_file

SHA = "0" * 64


@pytest.mark.parametrize(
    "path", ["../etc/passwd", "/abs", "a/../../b", "a\\b", "", "manifest.json"]
)
def test_model_file_paths_must_stay_inside_the_model_folder(path: str) -> None:
    with pytest.raises(ValidationError):
        ModelFile(path=path, size=1, sha256=SHA)


@pytest.mark.parametrize("name", ["a/b", "..", ".hidden", "", "x" * 200])
def test_names_cannot_become_unsafe_keys(name: str) -> None:
    with pytest.raises(ValidationError):
        Manifest(
            name=name,
            version="1",
            type="embed",
            format="gguf",
            files=[ModelFile(path="m.gguf", size=1, sha256=SHA)],
            total_size=1,
            created_at=datetime.now(UTC),
        )


def test_model_files_skips_hidden_files_and_hashes_the_rest(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "weights.bin").write_bytes(b"abc")
    (tmp_path / ".gitattributes").write_text("*.bin lfs")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "x").write_text("x")
    found = [described for _, described in model_files(tmp_path)]
    assert [f.path for f in found] == ["sub/weights.bin"]
    assert found[0].size == 3
    assert found[0].sha256 == sha256_file(tmp_path / "sub" / "weights.bin")
    assert found[0].sha256.startswith("ba7816bf")  # sha256("abc")
