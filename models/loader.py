"""A local, verified copy of the model an alias points at.

Cache layout: ``<cache_dir>/<name>/<version>/`` holds the files and the ``manifest.json``
they were verified against. A download goes to a temporary folder beside it and is renamed
into place only once every file matched its checksum, so a crash or a concurrent start never
leaves a half-written model where a service would load it.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import structlog

from models import offline as _offline  # noqa: F401 - before any model library is imported
from models.manifest import MANIFEST_FILE, Manifest, ModelFile, sha256_file
from models.registry import ModelNotFound, ModelRegistry

log = structlog.get_logger("haven.models")


class ModelIntegrityError(Exception):
    """A model file is missing or does not match its manifest; ``path`` names it."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class LocalModel:
    manifest: Manifest
    path: Path  # the folder holding the model's files

    @property
    def main_file(self) -> Path:
        """The file of a single-file format (gguf)."""
        if len(self.manifest.files) != 1:
            raise ValueError(f"{self.manifest.ref} has {len(self.manifest.files)} files, not one")
        return self.path / self.manifest.files[0].path


class ModelCache:
    def __init__(self, registry: ModelRegistry, cache_dir: Path) -> None:
        self.registry = registry
        self.cache_dir = cache_dir

    def fetch(self, alias: str) -> LocalModel:
        """The verified local copy of what ``alias`` points at, downloading it if needed.

        A cached copy is re-hashed before it is reused (cheap next to loading the model, and
        the only way to notice a file changed on disk); a damaged cache is replaced by a
        fresh download, which must itself match the manifest.
        """
        return self.fetch_version(self.registry.resolve(alias), alias=alias)

    def fetch_version(self, manifest: Manifest, *, alias: str | None = None) -> LocalModel:
        """The verified local copy of one published version (see ``fetch``)."""
        target = self._folder(manifest)
        if target.is_dir():
            try:
                self._verify_folder(manifest, target)
            except ModelIntegrityError as exc:
                log.warning(
                    "models.cache.damaged", model=manifest.ref, file=exc.path, error=str(exc)
                )
            else:
                log.info("models.cache.reused", alias=alias, model=manifest.ref)
                return LocalModel(manifest, target)
        self._download(manifest, target)
        log.info("models.cache.downloaded", alias=alias, model=manifest.ref)
        return LocalModel(manifest, target)

    def verify(self, alias: str) -> LocalModel:
        """Re-hash the cached copy of ``alias``; raise ``ModelIntegrityError`` on damage."""
        manifest = self.registry.resolve(alias)
        target = self._folder(manifest)
        if not target.is_dir():
            raise ModelIntegrityError(
                f"{manifest.ref} is not in the cache at {target}", path=str(target)
            )
        self._verify_folder(manifest, target)
        return LocalModel(manifest, target)

    def contains(self, manifest: Manifest) -> bool:
        return self._folder(manifest).is_dir()

    def _folder(self, manifest: Manifest) -> Path:
        return self.cache_dir / manifest.name / manifest.version

    def _verify_folder(self, manifest: Manifest, folder: Path) -> None:
        cached = folder / MANIFEST_FILE
        if not cached.is_file() or not Manifest.model_validate_json(
            cached.read_bytes()
        ).same_content(manifest):
            raise ModelIntegrityError(
                f"cached {manifest.ref} was verified against another manifest", path=str(cached)
            )
        for file in manifest.files:
            _check_file(manifest, file, folder / file.path)

    def _download(self, manifest: Manifest, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Same parent, same file system: the final rename is atomic.
        temp = target.parent / f".tmp-{manifest.version}-{uuid.uuid4().hex[:8]}"
        temp.mkdir()
        try:
            for file in manifest.files:
                self._download_file(manifest, file, temp / file.path)
            (temp / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))
            self._move_into_place(temp, target)
        finally:
            shutil.rmtree(temp, ignore_errors=True)

    def _download_file(self, manifest: Manifest, file: ModelFile, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        try:
            with dest.open("wb") as out:
                for chunk in self.registry.open_file(manifest, file):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
        except ModelNotFound as exc:
            raise ModelIntegrityError(
                f"{manifest.ref}: file {file.path} is missing from the models bucket",
                path=file.path,
            ) from exc
        if size != file.size or digest.hexdigest() != file.sha256:
            raise ModelIntegrityError(
                f"{manifest.ref}: file {file.path} in the models bucket does not match its"
                f" manifest (size {size} vs {file.size}, sha256 {digest.hexdigest()[:12]}..."
                f" vs {file.sha256[:12]}...)",
                path=file.path,
            )

    def _move_into_place(self, temp: Path, target: Path) -> None:
        if target.exists():  # a damaged copy: move it aside first, then drop it
            trash = target.parent / f".trash-{uuid.uuid4().hex[:8]}"
            target.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            temp.rename(target)
        except OSError:
            # Another process finished the same download first; its copy is verified when
            # this one is next fetched, and it matched the same manifest.
            if not target.is_dir():
                raise


def _check_file(manifest: Manifest, file: ModelFile, path: Path) -> None:
    if not path.is_file():
        raise ModelIntegrityError(
            f"{manifest.ref}: cached file {file.path} is missing", path=file.path
        )
    if path.stat().st_size != file.size or sha256_file(path) != file.sha256:
        raise ModelIntegrityError(
            f"{manifest.ref}: cached file {file.path} does not match its sha256 in the manifest",
            path=file.path,
        )
