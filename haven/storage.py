"""The object store (MinIO or any S3 endpoint) through the ``minio`` client.

Tenant content always lives under ``tenant/<id>/...``; ``tenant_key`` is the only way to
build such a key, so a key without a tenant prefix cannot be made by accident.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import S3Error

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


def tenant_prefix(tenant_id: uuid.UUID) -> str:
    return f"tenant/{tenant_id}/"


def tenant_key(tenant_id: uuid.UUID, *parts: str) -> str:
    for part in parts:
        if not part or part.startswith("/") or ".." in part.split("/"):
            raise ValueError(f"unsafe object key part {part!r}")
    return tenant_prefix(tenant_id) + "/".join(parts)


def presigned_get(client: Minio, bucket: str, key: str, ttl: timedelta) -> str:
    return client.presigned_get_object(bucket, key, expires=ttl)


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
