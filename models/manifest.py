"""The manifest of one published model version, and the alias record pointing at one.

Object layout in the models bucket::

    <name>/<version>/<files...>
    <name>/<version>/manifest.json     written last: a version without it does not exist
    aliases/<alias>.json               AliasRecord
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

ModelType = Literal["embed", "llm", "sparse"]
ModelFormat = Literal["sentence-transformers", "gguf", "onnx"]

MANIFEST_FILE = "manifest.json"
# Languages of bundled models whose manifests were published before languages were
# declared (a version's manifest never changes).
KNOWN_LANGUAGES: dict[str, tuple[str, ...]] = {"all-minilm-l6-v2": ("en",)}
# Names, versions and aliases become object keys and cache folder names: no slashes, no dots
# first, so none of them can climb out of its prefix or folder.
_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_HASH_CHUNK = 1024 * 1024


def check_identifier(value: str, what: str) -> str:
    if not _IDENTIFIER.match(value):
        raise ValueError(
            f"{what} {value!r} must be 1-128 characters of letters, digits, '.', '_', '+', '-'"
            " and start with a letter or digit"
        )
    return value


class ModelFile(BaseModel):
    path: str  # relative, POSIX separators
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("path")
    @classmethod
    def _relative_and_inside(cls, value: str) -> str:
        # A manifest is data read from the store; a path like ../../x must never be written
        # outside the cache folder.
        parts = PurePosixPath(value).parts
        if not parts or value.startswith("/") or "\\" in value or ".." in parts or "." in parts:
            raise ValueError(f"unsafe model file path {value!r}")
        if value == MANIFEST_FILE:
            raise ValueError(f"{MANIFEST_FILE} is reserved for the manifest itself")
        return value


class Manifest(BaseModel):
    name: str
    version: str
    type: ModelType
    format: ModelFormat
    files: list[ModelFile] = Field(min_length=1)
    total_size: int = Field(ge=0)
    parameters: dict[str, Any] = {}
    created_at: datetime

    @field_validator("name", "version")
    @classmethod
    def _identifier(cls, value: str) -> str:
        return check_identifier(value, "name/version")

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"

    @property
    def languages(self) -> list[str]:
        """The languages (ISO 639-1) an embedding model is declared to understand:
        ``parameters["languages"]`` (a list, or "en,ru" as ``--param`` gives it); for a
        bundled model published before languages were declared, what Haven knows of it;
        empty when unknown (trusted with every language)."""
        declared = self.parameters.get("languages")
        if declared is None:
            return list(KNOWN_LANGUAGES.get(self.name, ()))
        items = declared.split(",") if isinstance(declared, str) else list(declared)
        return [str(code).strip().lower() for code in items if str(code).strip()]

    @property
    def query_prefix(self) -> str:
        """Put before every query this model embeds (E5: ``"query: "``)."""
        return str(self.parameters.get("query_prefix") or "")

    @property
    def passage_prefix(self) -> str:
        """Put before every passage this model embeds (E5: ``"passage: "``)."""
        return str(self.parameters.get("passage_prefix") or "")

    def same_content(self, other: Manifest) -> bool:
        """Same files with the same checksums (timestamps and parameters aside)."""
        return _file_set(self) == _file_set(other)


def _file_set(manifest: Manifest) -> set[tuple[str, int, str]]:
    return {(f.path, f.size, f.sha256) for f in manifest.files}


class ModelRef(BaseModel):
    name: str
    version: str


class AliasRecord(BaseModel):
    alias: str
    name: str
    version: str
    # Versions the alias pointed at before, oldest first; rollback pops the last one.
    previous: list[ModelRef] = []
    updated_at: datetime
    # Who put it here: "installer" (the bundled defaults, `haven up` / models-init) or
    # "operator" (a command); None in records written before this was kept.
    set_by: Literal["installer", "operator"] | None = None

    @property
    def target(self) -> ModelRef:
        return ModelRef(name=self.name, version=self.version)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def model_files(root: Path) -> list[tuple[Path, ModelFile]]:
    """Every file of a model folder (or the single file) with its size and checksum.

    Hidden files and folders (``.git``, ``.gitattributes``, ``.cache``) are not part of a
    model and are left out.
    """
    if root.is_file():
        return [(root, _describe(root, root.name))]
    if not root.is_dir():
        raise FileNotFoundError(f"no model file or folder at {root}")
    found = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        found.append((path, _describe(path, relative.as_posix())))
    if not found:
        raise FileNotFoundError(f"model folder {root} holds no files")
    return found


def _describe(path: Path, relative: str) -> ModelFile:
    return ModelFile(path=relative, size=path.stat().st_size, sha256=sha256_file(path))


def now() -> datetime:
    return datetime.now(UTC)
