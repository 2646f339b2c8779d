"""The registry: model versions and aliases as objects in the models bucket.

A version is immutable once its manifest exists; publishing the same files again is a no-op
and publishing different files under an existing version is refused. Aliases are the only
mutable records, and they keep the versions they pointed at before, for rollback.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, cast

from minio import Minio
from minio.error import S3Error

from models import formats
from models.manifest import (
    MANIFEST_FILE,
    AliasRecord,
    Manifest,
    ModelFile,
    ModelFormat,
    ModelRef,
    ModelType,
    check_identifier,
    model_files,
    now,
)

ALIAS_FOLDER = "aliases"
ALIAS_PREFIX = f"{ALIAS_FOLDER}/"
# Rollback depth kept per alias; older entries fall off.
MAX_ALIAS_HISTORY = 20
_MISSING_CODES = {"NoSuchKey", "NoSuchObject", "ResourceNotFound"}


class RegistryError(Exception):
    """Base of the registry's errors; the message is meant for an operator."""


class ModelNotFound(RegistryError):
    pass


class AliasNotFound(RegistryError):
    pass


class VersionConflict(RegistryError):
    """The version exists with different files; versions are immutable."""


class NothingToRollBack(RegistryError):
    pass


class ModelRegistry:
    def __init__(self, client: Minio, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    # -- versions ---------------------------------------------------------------------------

    def publish(
        self,
        path: Path,
        *,
        name: str,
        version: str,
        type: str,
        format: str | None = None,
        alias: str | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> Manifest:
        """Upload a model folder (or single file) as ``name/version``; the manifest is
        written last, so readers never see a version whose files are still uploading."""
        check_identifier(name, "model name")
        check_identifier(version, "model version")
        if name == ALIAS_FOLDER:
            raise ValueError(f"{ALIAS_FOLDER!r} is reserved for alias records")
        model_format = cast(ModelFormat, format or formats.detect_format(path))
        files = model_files(path)
        manifest = Manifest(
            name=name,
            version=version,
            type=cast(ModelType, type),
            format=model_format,
            files=[described for _, described in files],
            total_size=sum(described.size for _, described in files),
            parameters={**formats.describe(path, model_format), **(parameters or {})},
            created_at=now(),
        )
        existing = self._manifest_or_none(name, version)
        if existing is not None:
            if not existing.same_content(manifest):
                raise VersionConflict(
                    f"{name}/{version} is already published with different files;"
                    " publish a new version instead"
                )
            manifest = existing  # same files: nothing to upload
        else:
            for local, described in files:
                self.client.fput_object(
                    self.bucket, self.object_key(manifest, described), str(local)
                )
            self._put_json(self._manifest_key(name, version), manifest.model_dump(mode="json"))
        if alias is not None:
            self.set_alias(alias, name, version)
        return manifest

    def manifest(self, name: str, version: str) -> Manifest:
        found = self._manifest_or_none(name, version)
        if found is None:
            raise ModelNotFound(f"model {name}/{version} is not published in {self.bucket!r}")
        return found

    def list(self) -> builtins.list[Manifest]:
        manifests = []
        for obj in self.client.list_objects(self.bucket, recursive=True):
            key = obj.object_name or ""
            parts = key.split("/")
            if len(parts) == 3 and parts[2] == MANIFEST_FILE and parts[0] != ALIAS_FOLDER:
                manifests.append(self.manifest(parts[0], parts[1]))
        return sorted(manifests, key=lambda m: (m.name, m.created_at))

    def object_key(self, manifest: Manifest, file: ModelFile) -> str:
        return f"{manifest.name}/{manifest.version}/{file.path}"

    def open_file(self, manifest: Manifest, file: ModelFile) -> Iterator[bytes]:
        """Stream one file of a version; ``ModelNotFound`` if the object is missing."""
        key = self.object_key(manifest, file)
        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in _MISSING_CODES:
                raise ModelNotFound(f"{key} is missing from bucket {self.bucket!r}") from exc
            raise
        try:
            yield from response.stream(1024 * 1024)
        finally:
            response.close()
            response.release_conn()

    def damaged_files(self, manifest: Manifest) -> builtins.list[str]:
        """Paths whose object in the bucket is missing or does not match the manifest."""
        damaged = []
        for file in manifest.files:
            digest, size = hashlib.sha256(), 0
            try:
                for chunk in self.open_file(manifest, file):
                    digest.update(chunk)
                    size += len(chunk)
            except ModelNotFound:
                damaged.append(file.path)
                continue
            if size != file.size or digest.hexdigest() != file.sha256:
                damaged.append(file.path)
        return damaged

    # -- aliases ----------------------------------------------------------------------------

    def resolve(self, alias: str) -> Manifest:
        record = self.alias(alias)
        return self.manifest(record.name, record.version)

    def alias(self, alias: str) -> AliasRecord:
        data = self._get_json(self._alias_key(alias))
        if data is None:
            raise AliasNotFound(f"alias {alias!r} does not exist in {self.bucket!r}")
        return AliasRecord.model_validate(data)

    def aliases(self) -> builtins.list[AliasRecord]:
        records = []
        for obj in self.client.list_objects(self.bucket, prefix=ALIAS_PREFIX):
            key = obj.object_name or ""
            if key.endswith(".json"):
                records.append(self.alias(key[len(ALIAS_PREFIX) : -len(".json")]))
        return sorted(records, key=lambda r: r.alias)

    def set_alias(
        self,
        alias: str,
        name: str,
        version: str,
        *,
        set_by: Literal["installer", "operator"] = "operator",
    ) -> None:
        """Point ``alias`` at a published version, remembering where it pointed before.

        Alias records are written by administrators, one at a time; S3 offers no
        compare-and-swap, so two concurrent changes of one alias keep the last one.
        """
        self.manifest(name, version)  # refuse to point at something that does not exist
        try:
            current: AliasRecord | None = self.alias(alias)
        except AliasNotFound:
            current = None
        if current is not None and (current.name, current.version) == (name, version):
            return
        previous = [] if current is None else [*current.previous, current.target]
        record = AliasRecord(
            alias=alias,
            name=name,
            version=version,
            previous=previous[-MAX_ALIAS_HISTORY:],
            updated_at=now(),
            set_by=set_by,
        )
        self._put_json(self._alias_key(alias), record.model_dump(mode="json"))

    def rollback(self, alias: str) -> Manifest:
        """Point ``alias`` back at the version it pointed at before the last change."""
        record = self.alias(alias)
        if not record.previous:
            raise NothingToRollBack(f"alias {alias!r} has no previous version to roll back to")
        target: ModelRef = record.previous[-1]
        manifest = self.manifest(target.name, target.version)
        rolled = AliasRecord(
            alias=alias,
            name=target.name,
            version=target.version,
            previous=record.previous[:-1],
            updated_at=now(),
            set_by="operator",
        )
        self._put_json(self._alias_key(alias), rolled.model_dump(mode="json"))
        return manifest

    # -- objects ----------------------------------------------------------------------------

    def _manifest_key(self, name: str, version: str) -> str:
        check_identifier(name, "model name")
        check_identifier(version, "model version")
        return f"{name}/{version}/{MANIFEST_FILE}"

    def _alias_key(self, alias: str) -> str:
        return f"{ALIAS_PREFIX}{check_identifier(alias, 'alias')}.json"

    def _manifest_or_none(self, name: str, version: str) -> Manifest | None:
        data = self._get_json(self._manifest_key(name, version))
        return None if data is None else Manifest.model_validate(data)

    def _get_json(self, key: str) -> Any:
        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in _MISSING_CODES:
                return None
            raise
        try:
            return json.loads(response.read())
        finally:
            response.close()
            response.release_conn()

    def _put_json(self, key: str, data: Any) -> None:
        body = json.dumps(data, indent=2, sort_keys=True).encode()
        self.client.put_object(
            self.bucket, key, io.BytesIO(body), len(body), content_type="application/json"
        )
