"""The raw-object bucket in a backup: every object copied one at a time, streamed, its size
and sha256 recorded; a restore streams each back and checks both."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

from minio import Minio

from haven.backup.target import BackupError, BackupTarget, Written, safe_relative

OBJECTS = "objects"


class _Stream:
    """A file-like view of an iterator of chunks (what a target's ``open`` yields)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.buffer = b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self.buffer) < n:
            try:
                self.buffer += next(self.chunks)
            except StopIteration:
                break
        if n < 0:
            data, self.buffer = self.buffer, b""
        else:
            data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data


def _hashed(chunks: Iterator[bytes], digest: Any) -> Iterator[bytes]:
    for chunk in chunks:
        digest.update(chunk)
        yield chunk


def object_path(key: str) -> str:
    return f"{OBJECTS}/{safe_relative(key)}"


def copy_out(
    s3: Minio,
    bucket: str,
    target: BackupTarget,
    backup_id: str,
    *,
    progress: Callable[[int], None] = lambda done: None,
) -> dict[str, Written]:
    """Every object of ``bucket`` into the backup; returns what was written, by key."""
    written: dict[str, Written] = {}
    if not s3.bucket_exists(bucket):
        return written
    for found in s3.list_objects(bucket, recursive=True):
        key = found.object_name
        if not key or found.is_dir:
            continue
        response = s3.get_object(bucket, key)
        try:
            written[key] = target.write(backup_id, object_path(key), response)
        finally:
            response.close()
            response.release_conn()
        progress(len(written))
    return written


def copy_in(
    s3: Minio,
    bucket: str,
    target: BackupTarget,
    backup_id: str,
    objects: dict[str, Any],
    *,
    progress: Callable[[int], None] = lambda done: None,
) -> None:
    """Every object of the manifest back into ``bucket``, each checked against its sha256
    as it streams (a mismatch stops the restore naming the object)."""
    if not s3.bucket_exists(bucket):
        s3.make_bucket(bucket)
    for done, (key, expected) in enumerate(sorted(objects.items()), start=1):
        digest = hashlib.sha256()
        s3.put_object(
            bucket,
            key,
            _Stream(_hashed(target.open(backup_id, object_path(key)), digest)),  # type: ignore[arg-type]
            length=int(expected["size"]),
        )
        if digest.hexdigest() != expected["sha256"]:
            raise BackupError(
                "restore.checksum", f"object {key} does not match its sha256 in the manifest"
            )
        progress(done)


def inventory(s3: Minio, bucket: str) -> dict[str, dict[str, Any]]:
    """Every object of ``bucket`` with its size and sha256 (read back: a restore's check)."""
    found: dict[str, dict[str, Any]] = {}
    if not s3.bucket_exists(bucket):
        return found
    for listed in s3.list_objects(bucket, recursive=True):
        key = listed.object_name
        if not key or listed.is_dir:
            continue
        response = s3.get_object(bucket, key)
        digest = hashlib.sha256()
        size = 0
        try:
            for chunk in response.stream(1024 * 1024):
                digest.update(chunk)
                size += len(chunk)
        finally:
            response.close()
            response.release_conn()
        found[key] = {"size": size, "sha256": digest.hexdigest()}
    return found
