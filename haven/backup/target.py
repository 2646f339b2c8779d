"""Where backups are written: a folder (a volume mounted from another machine) or a second S3
endpoint and bucket. Never the storage node the backup protects: the settings name a target of
their own (``HAVEN_BACKUP_*``), and a target equal to the live bucket is refused.

Every file is written streamed, its size and sha256 computed on the way; a backup is
``backups/<id>/...`` and is complete once its ``manifest.json`` exists (written last).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from minio import Minio
from minio.error import S3Error

from haven.maintenance_settings import BackupSettings
from haven.settings import StoreSettings

PREFIX = "backups"
MANIFEST = "manifest.json"
CHUNK = 1024 * 1024


class BackupError(Exception):
    """A backup or restore step failed; ``code`` for the job, ``message`` for people."""

    def __init__(self, code: str, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.permanent = permanent


class Readable(Protocol):
    """What a target reads from: a file, a response body, a process's stdout."""

    def read(self, n: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class Written:
    size: int
    sha256: str


class HashingReader:
    """Reads through ``source``, counting and hashing what passes."""

    def __init__(self, source: Readable) -> None:
        self.source = source
        self.size = 0
        self.digest = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.source.read(n)
        self.size += len(data)
        self.digest.update(data)
        return data

    def written(self) -> Written:
        return Written(self.size, self.digest.hexdigest())


def safe_relative(path: str) -> str:
    """A backup-relative path that stays inside its backup (object keys come from clients)."""
    parts = path.split("/")
    if not path or any(p in ("..", ".", "") for p in parts):
        raise BackupError("backup.bad_path", f"refused an unsafe path in a backup: {path!r}")
    return str(PurePosixPath(*parts))


class BackupTarget(Protocol):
    description: str

    def write(self, backup_id: str, path: str, source: Readable) -> Written: ...

    def open(self, backup_id: str, path: str) -> Iterator[bytes]: ...

    def exists(self, backup_id: str, path: str) -> bool: ...

    def backups(self) -> list[str]: ...

    def delete(self, backup_id: str) -> None: ...


class FolderTarget:
    """``<folder>/backups/<id>/<path>``; a file is written under a temporary name and renamed,
    so a crash never leaves a file that looks whole."""

    def __init__(self, folder: Path) -> None:
        self.root = folder.resolve() / PREFIX
        self.description = f"folder {self.root}"

    def _path(self, backup_id: str, path: str) -> Path:
        return self.root / safe_relative(backup_id) / safe_relative(path)

    def write(self, backup_id: str, path: str, source: Readable) -> Written:
        final = self._path(backup_id, path)
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.with_name(final.name + ".partial")
        reader = HashingReader(source)
        with partial.open("wb") as out:
            while data := reader.read(CHUNK):
                out.write(data)
        partial.rename(final)
        return reader.written()

    def open(self, backup_id: str, path: str) -> Iterator[bytes]:
        with self._path(backup_id, path).open("rb") as handle:
            while data := handle.read(CHUNK):
                yield data

    def exists(self, backup_id: str, path: str) -> bool:
        return self._path(backup_id, path).is_file()

    def backups(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(entry.name for entry in self.root.iterdir() if entry.is_dir())

    def delete(self, backup_id: str) -> None:
        shutil.rmtree(self.root / safe_relative(backup_id), ignore_errors=True)


class S3Target:
    """``s3://<bucket>/backups/<id>/<path>`` on a second S3 endpoint."""

    def __init__(self, client: Minio, bucket: str, *, part_bytes: int) -> None:
        self.client = client
        self.bucket = bucket
        self.part_bytes = part_bytes
        self.description = f"s3 bucket {bucket}"

    def _key(self, backup_id: str, path: str) -> str:
        return f"{PREFIX}/{safe_relative(backup_id)}/{safe_relative(path)}"

    def ensure(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            self.client.make_bucket(self.bucket)

    def write(self, backup_id: str, path: str, source: Readable) -> Written:
        reader = HashingReader(source)
        self.client.put_object(
            self.bucket,
            self._key(backup_id, path),
            reader,  # type: ignore[arg-type]  # minio reads only read()
            length=-1,
            part_size=self.part_bytes,
        )
        return reader.written()

    def open(self, backup_id: str, path: str) -> Iterator[bytes]:
        response = self.client.get_object(self.bucket, self._key(backup_id, path))
        try:
            yield from response.stream(CHUNK)
        finally:
            response.close()
            response.release_conn()

    def exists(self, backup_id: str, path: str) -> bool:
        try:
            self.client.stat_object(self.bucket, self._key(backup_id, path))
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NoSuchBucket"):
                return False
            raise
        return True

    def backups(self) -> list[str]:
        if not self.client.bucket_exists(self.bucket):
            return []
        found = self.client.list_objects(self.bucket, prefix=f"{PREFIX}/", recursive=False)
        return sorted(
            o.object_name.removeprefix(f"{PREFIX}/").rstrip("/")
            for o in found
            if o.object_name and o.is_dir
        )

    def delete(self, backup_id: str) -> None:
        from minio.deleteobjects import DeleteObject

        prefix = f"{PREFIX}/{safe_relative(backup_id)}/"
        names = [
            DeleteObject(o.object_name)
            for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
            if o.object_name
        ]
        for failed in self.client.remove_objects(self.bucket, names):
            raise BackupError("backup.delete_failed", f"could not delete {failed.name}")


def make_target(backup: BackupSettings, stores: StoreSettings) -> BackupTarget:
    """The configured target; refuses one that is the live object bucket itself."""
    if backup.target == "folder":
        return FolderTarget(backup.folder)
    assert backup.s3_endpoint is not None  # the settings validator requires it
    if backup.s3_endpoint == stores.s3_endpoint and backup.s3_bucket == stores.s3_bucket:
        raise BackupError(
            "backup.same_store",
            "HAVEN_BACKUP_S3_* names the live bucket: a backup must not live on the store "
            "it protects",
            permanent=True,
        )
    client = Minio(
        backup.s3_endpoint,
        access_key=backup.s3_access_key,
        secret_key=backup.s3_secret_key.get_secret_value(),
        secure=backup.s3_secure,
        region=backup.s3_region,
    )
    target = S3Target(client, backup.s3_bucket, part_bytes=backup.part_bytes)
    target.ensure()
    return target
