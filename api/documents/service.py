"""Accepting documents: dedup by content, versions under a source id, raw bytes in the object
store under the tenant's prefix, and one ingest job per new version.

The bytes reach the object store before the rows commit, so an accepted document always has
its file; a failed commit leaves at most an unreferenced object for maintenance to sweep.
"""

from __future__ import annotations

import hashlib
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from fastapi import HTTPException, status
from minio import Minio
from minio.error import S3Error
from sqlalchemy.orm import Session

from api.outbox import JobOutbox
from haven.auth.principal import Principal
from haven.db.repositories import (
    DocumentRepository,
    JobRepository,
    UploadRepository,
)
from haven.db.tables import (
    Document,
    DocumentState,
    DocumentVersion,
    Job,
    JobKind,
    JobState,
    Upload,
)
from haven.filetypes import SUPPORTED_TYPES, UnsupportedType, detect_mime
from haven.index import ChunkIndex
from haven.queueing import INGEST_TASK
from haven.storage import download, tenant_key

READ_SIZE = 1024 * 1024


@dataclass(frozen=True)
class IncomingFile:
    path: Path  # a local spool file; never the whole file in memory
    filename: str
    declared_mime: str | None
    size: int
    sha256: str


@dataclass(frozen=True)
class Accepted:
    document: Document
    version: DocumentVersion
    job: Job | None
    duplicate: bool


def hash_file(stream: BinaryIO, max_bytes: int, copy_to: BinaryIO | None = None) -> tuple[str, int]:
    """sha256 and size of a stream read block by block (optionally copied on the way)."""
    digest = hashlib.sha256()
    size = 0
    while block := stream.read(READ_SIZE):
        size += len(block)
        if size > max_bytes:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE, f"file is larger than {max_bytes} bytes"
            )
        digest.update(block)
        if copy_to is not None:
            copy_to.write(block)
    return digest.hexdigest(), size


def _check_type(filename: str, path: Path, declared: str | None) -> str:
    with path.open("rb") as fh:
        head = fh.read(8192)
    try:
        return detect_mime(filename, head, declared)
    except UnsupportedType as exc:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"unsupported file type; supported: {', '.join(sorted(SUPPORTED_TYPES))}",
        ) from exc


def raw_key(tenant_id: uuid.UUID, sha256: str) -> str:
    """Content-addressed, so storing the same bytes twice writes one object."""
    return tenant_key(tenant_id, "raw", sha256[:2], sha256)


def accept_document(
    session: Session,
    principal: Principal,
    outbox: JobOutbox,
    s3: Minio,
    bucket: str,
    incoming: IncomingFile,
    *,
    title: str | None,
    source_id: str | None,
    tags: list[str],
    max_attempts: int,
) -> Accepted:
    if incoming.size == 0:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "the file is empty")
    mime = _check_type(incoming.filename, incoming.path, incoming.declared_mime)
    documents = DocumentRepository(session, principal)
    jobs = JobRepository(session, principal)

    existing = documents.by_content(incoming.sha256)
    if existing is not None:
        same = [v for v in documents.versions(existing.id) if v.content_sha256 == incoming.sha256]
        version = same[-1]
        job_rows = jobs.for_subject(version.id)
        return Accepted(existing, version, job_rows[-1] if job_rows else None, duplicate=True)

    document = documents.by_source_id(source_id) if source_id else None
    if document is None:
        document = documents.add(
            Document(
                source_id=source_id,
                title=title or incoming.filename,
                mime=mime,
                state=DocumentState.QUEUED,
                tags=sorted(set(tags)),
            )
        )
        number = 1
    else:
        number = max((v.version for v in documents.versions(document.id)), default=0) + 1
        document.mime = mime
        if title:
            document.title = title
        if tags:
            document.tags = sorted(set(tags))

    key = raw_key(principal.tenant_id, incoming.sha256)
    try:
        s3.fput_object(bucket, key, str(incoming.path), content_type=mime)
    except S3Error as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "the object store refused the file; try again",
            headers={"Retry-After": "5"},
        ) from exc

    version = documents.add_version(
        document,
        DocumentVersion(
            version=number,
            content_sha256=incoming.sha256,
            size_bytes=incoming.size,
            object_key=key,
            state=DocumentState.QUEUED,
        ),
    )
    job = jobs.add(
        Job(
            kind=JobKind.INGEST,
            state=JobState.QUEUED,
            subject_id=version.id,
            idempotency_key=(
                f"{principal.tenant_id}:{source_id or document.id}:{incoming.sha256}:ingest"
            ),
            params={"document_id": str(document.id), "version": number},
            max_attempts=max_attempts,
        )
    )
    outbox.add(INGEST_TASK, job.id)
    return Accepted(document, version, job, duplicate=False)


@contextmanager
def spooled_object(s3: Minio, bucket: str, key: str) -> Iterator[Path]:
    """Download an object to a temporary file (presigned uploads are verified server-side)."""
    with tempfile.TemporaryDirectory(prefix="haven-upload-") as tmp:
        path = Path(tmp) / "object"
        download(s3, bucket, key, path)
        yield path


def create_presigned_upload(
    session: Session,
    principal: Principal,
    s3: Minio,
    bucket: str,
    *,
    filename: str,
    mime: str | None,
    title: str | None,
    source_id: str | None,
    tags: list[str],
    ttl: timedelta,
) -> tuple[Upload, str]:
    upload_id = uuid.uuid4()
    key = tenant_key(principal.tenant_id, "uploads", str(upload_id))
    upload = UploadRepository(session, principal).add(
        Upload(
            id=upload_id,
            object_key=key,
            filename=filename,
            mime=mime,
            title=title,
            source_id=source_id,
            tags=tags,
            expires_at=datetime.now(UTC) + ttl,
        )
    )
    url = s3.presigned_put_object(bucket, key, expires=ttl)
    return upload, url


def delete_document(
    session: Session,
    principal: Principal,
    outbox: JobOutbox,
    s3: Minio,
    bucket: str,
    index: ChunkIndex,
    document_id: uuid.UUID,
) -> None:
    documents = DocumentRepository(session, principal)
    document = documents.require(document_id)
    jobs = JobRepository(session, principal)
    for version in documents.versions(document.id):
        for job in jobs.for_subject(version.id):
            jobs.request_cancel(job)
    index.delete_document(principal.tenant_id, document.id)
    keys = sorted({v.object_key for v in documents.versions(document.id)})
    documents.delete(document)  # versions and chunk rows go with it (ON DELETE CASCADE)

    def remove_objects() -> None:
        # Only after the rows are gone for good: a failed commit must not lose the file.
        for key in keys:
            s3.remove_object(bucket, key)

    outbox.after_commit(remove_objects)
