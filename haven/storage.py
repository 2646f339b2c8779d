"""The object store (MinIO or any S3 endpoint) through the ``minio`` client.

Tenant content always lives under ``tenant/<id>/...``; ``tenant_key`` is the only way to
build such a key, so a key without a tenant prefix cannot be made by accident.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import urllib3
from minio import Minio
from minio.datatypes import PostPolicy
from minio.deleteobjects import DeleteObject
from minio.error import S3Error
from sqlalchemy import event
from sqlalchemy.orm import Session

from haven.settings import StoreSettings


def make_client(settings: StoreSettings) -> Minio:
    return Minio(
        settings.s3_endpoint,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key.get_secret_value(),
        secure=settings.s3_secure,
        region=settings.s3_region,
        # Fail within seconds when the store is down instead of minio's long default retries.
        http_client=urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=3, read=120),
            retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[502, 503, 504]),
            maxsize=32,
        ),
    )


def ensure_bucket(client: Minio, bucket: str) -> None:
    try:
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
    except S3Error as exc:  # another process created it between the two calls
        if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
            raise


def remove_on_rollback(session: Session, client: Minio, bucket: str, key: str) -> None:
    """The object was written for rows of ``session``'s transaction: if it rolls back instead
    of committing, the object goes too (the rows that would have referenced it never existed).
    If the store is down as well, maintenance's orphan sweep gets it."""
    committed = False

    def on_commit(_: Session) -> None:
        nonlocal committed
        committed = True

    def on_rollback(_: Session) -> None:
        if committed:
            return
        with contextlib.suppress(S3Error):
            client.remove_object(bucket, key)

    event.listen(session, "after_commit", on_commit, once=True)
    event.listen(session, "after_rollback", on_rollback, once=True)


def tenant_prefix(tenant_id: uuid.UUID) -> str:
    return f"tenant/{tenant_id}/"


def tenant_key(tenant_id: uuid.UUID, *parts: str) -> str:
    for part in parts:
        if not part or part.startswith("/") or ".." in part.split("/"):
            raise ValueError(f"unsafe object key part {part!r}")
    return tenant_prefix(tenant_id) + "/".join(parts)


@dataclass(frozen=True)
class Presigner:
    """Signs the URLs handed to clients, for the address clients reach the store at.

    SigV4 signs the Host header, so a URL signed for the internal ``minio:9000`` fails from
    outside. With a public URL (``https://haven.example.org/objects``) the signature is made
    for the public host and for the path the store receives; the public path prefix, which
    nginx strips before passing the request on, is added to the URL afterwards. The client
    here only computes signatures: it never opens a connection (the region is given, so
    minio does not ask the store for it).
    """

    client: Minio
    base: str  # scheme://host[:port][/prefix], what the client's URLs start with

    def get_url(
        self, bucket: str, key: str, ttl: timedelta, response_headers: dict[str, str]
    ) -> str:
        url = self.client.presigned_get_object(
            bucket,
            key,
            expires=ttl,
            response_headers=response_headers,  # type: ignore[arg-type]
        )
        return self._public(url)

    def post_policy(
        self, bucket: str, key: str, ttl: timedelta, max_bytes: int
    ) -> tuple[str, dict[str, str]]:
        """A browser-style POST upload of exactly ``key``, refused by the store itself when
        the file is empty or over ``max_bytes`` (the policy's content-length-range)."""
        policy = PostPolicy(bucket, datetime.now(UTC) + ttl)
        policy.add_equals_condition("key", key)
        policy.add_content_length_range_condition(1, max_bytes)
        fields = {"key": key, **self.client.presigned_post_policy(policy)}
        return f"{self.base}/{bucket}", fields

    def _public(self, url: str) -> str:
        base, signed = urlsplit(self.base), urlsplit(url)
        return urlunsplit(signed._replace(path=base.path + signed.path))


def make_presigner(settings: StoreSettings, public_url: str | None) -> Presigner:
    """The presigner for ``public_url`` (scheme, host and an optional path prefix), or for
    the store's own endpoint when no public URL is set (local development)."""
    if not public_url:
        scheme = "https" if settings.s3_secure else "http"
        return Presigner(make_client(settings), f"{scheme}://{settings.s3_endpoint}")
    parts = urlsplit(public_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"the public S3 URL {public_url!r} needs http(s)://host")
    client = Minio(
        parts.netloc,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key.get_secret_value(),
        secure=parts.scheme == "https",
        region=settings.s3_region,
    )
    return Presigner(client, public_url.rstrip("/"))


def download(client: Minio, bucket: str, key: str, path: Path, *, chunk: int = 1 << 20) -> None:
    """Stream an object to ``path`` with one GET (``fget_object`` asks for its size first)."""
    response = client.get_object(bucket, key)
    try:
        with path.open("wb") as out:
            for part in response.stream(chunk):
                out.write(part)
    finally:
        response.close()
        response.release_conn()


def delete_prefix(client: Minio, bucket: str, tenant_id: uuid.UUID) -> int:
    """Delete every object of a tenant (``tenant/<id>/``); returns how many were deleted."""
    names = [
        obj.object_name
        for obj in client.list_objects(bucket, prefix=tenant_prefix(tenant_id), recursive=True)
        if obj.object_name is not None
    ]
    failed = list(client.remove_objects(bucket, (DeleteObject(name) for name in names)))
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(names)} objects could not be deleted")
    return len(names)
