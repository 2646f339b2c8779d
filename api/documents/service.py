"""Accepting documents: dedup by content, versions under a source id, raw bytes in the object
store under the tenant's prefix, and one ingest job per new version.

Both ways in (a multipart upload, and a presigned upload the client then completes) are one
path: the bytes are spooled to a local file while they are hashed and measured, then
``accept_document`` decides what they are. Errors are ``haven.errors`` domain errors.

The rows are written (flushed) before the object: a row the database refuses leaves nothing
in the store. Each version has an object of its own, so removing one (a deleted document, a
rolled-back upload) never takes another document's file with it.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import quote

from minio import Minio
from minio.error import S3Error
from sqlalchemy.orm import Session

from api.outbox import JobOutbox
from api.settings import ApiSettings
from haven.auth.principal import Principal
from haven.contracts.text import refuse_nul
from haven.db.repositories import DocumentRepository, JobRepository, UploadRepository
from haven.db.tables import (
    Document,
    DocumentState,
    DocumentVersion,
    Job,
    JobKind,
    JobState,
    Upload,
)
from haven.errors import (
    Conflict,
    Gone,
    Invalid,
    LimitExceeded,
    NotFound,
    TooLarge,
    Unavailable,
    UnsupportedMediaType,
)
from haven.filetypes import (
    DOCX,
    HTML,
    MARKDOWN,
    PDF,
    PLAIN,
    SUPPORTED_TYPES,
    UnsupportedType,
    detect_mime,
)
from haven.index import ChunkIndex
from haven.queue_caps import check_queue_cap
from haven.queueing import INGEST_TASK
from haven.storage import Presigner, remove_on_rollback, tenant_key

READ_SIZE = 1024 * 1024
TITLE_MAX = 500  # documents.title
# Types a browser would run or render as a page: a download of one is sent as plain bytes.
ACTIVE_TYPES = {HTML, "application/xhtml+xml", "image/svg+xml", "text/xml"}
EXTENSIONS = {PLAIN: ".txt", MARKDOWN: ".md", HTML: ".html", PDF: ".pdf", DOCX: ".docx"}


class Readable(Protocol):
    """What an upload is read from: a multipart part or an object store response."""

    def read(self, amt: int, /) -> bytes: ...


@dataclass(frozen=True)
class Documents:
    """What the document services work with in one request."""

    session: Session
    principal: Principal
    outbox: JobOutbox
    s3: Minio
    presigner: Presigner
    settings: ApiSettings

    @property
    def bucket(self) -> str:
        return self.settings.s3_bucket


@dataclass(frozen=True)
class UploadMeta:
    """What the client said about a file, whichever way it came in."""

    filename: str
    declared_mime: str | None
    title: str | None
    source_id: str | None
    tags: list[str]


@dataclass(frozen=True)
class IncomingFile:
    path: Path  # a local spool file; never the whole file in memory
    size: int
    sha256: str


@dataclass(frozen=True)
class Accepted:
    document: Document
    version: DocumentVersion
    job: Job | None
    duplicate: bool


def _too_large(max_bytes: int) -> TooLarge:
    return TooLarge(
        f"file is larger than {max_bytes} bytes", limit=max_bytes, code="upload.too_large"
    )


def hash_file(stream: Readable, max_bytes: int, copy_to: BinaryIO | None = None) -> tuple[str, int]:
    """sha256 and size of a stream read block by block (optionally copied on the way)."""
    digest = hashlib.sha256()
    size = 0
    while block := stream.read(READ_SIZE):
        size += len(block)
        if size > max_bytes:
            raise _too_large(max_bytes)
        digest.update(block)
        if copy_to is not None:
            copy_to.write(block)
    return digest.hexdigest(), size


@contextmanager
def spooled(stream: Readable, max_bytes: int) -> Iterator[IncomingFile]:
    """The stream in a temporary file, hashed and measured; refused past ``max_bytes``."""
    with tempfile.TemporaryDirectory(prefix="haven-upload-") as tmp:
        path = Path(tmp) / "upload"
        with path.open("wb") as out:
            sha, size = hash_file(stream, max_bytes, copy_to=out)
        yield IncomingFile(path=path, size=size, sha256=sha)


def filename_title(filename: str) -> str:
    """A title from a client's file name: its last path part, cut to fit the column."""
    name = re.split(r"[\\/]", filename)[-1].strip() or "upload"
    return name[:TITLE_MAX]


def _check_type(meta: UploadMeta, path: Path) -> str:
    with path.open("rb") as fh:
        head = fh.read(8192)
    try:
        return detect_mime(meta.filename, head, meta.declared_mime)
    except UnsupportedType as exc:
        raise UnsupportedMediaType(
            f"unsupported file type; supported: {', '.join(sorted(SUPPORTED_TYPES))}",
            code="upload.unsupported_type",
        ) from exc


def raw_key(tenant_id: uuid.UUID, sha256: str, version_id: uuid.UUID) -> str:
    """One object per version: removing it (its document deleted, its upload rolled back)
    cannot remove a file another version still uses, even when both hold the same bytes."""
    return tenant_key(tenant_id, "raw", sha256[:2], sha256, str(version_id))


def _remove_on_rollback(docs: Documents, key: str) -> None:
    remove_on_rollback(docs.session, docs.s3, docs.bucket, key)


def accept_document(docs: Documents, incoming: IncomingFile, meta: UploadMeta) -> Accepted:
    """The one way a file becomes a document (or a new version of one)."""
    if incoming.size == 0:
        raise Invalid("the file is empty", code="upload.empty")
    try:
        refuse_nul(meta.filename)
    except ValueError as exc:
        raise Invalid(
            "the file name must not contain NUL characters", code="upload.filename"
        ) from exc
    mime = _check_type(meta, incoming.path)
    principal = docs.principal
    documents = DocumentRepository(docs.session, principal)
    jobs = JobRepository(docs.session, principal)

    existing = documents.by_content(incoming.sha256)
    if existing is not None:
        same = [v for v in documents.versions(existing.id) if v.content_sha256 == incoming.sha256]
        version = same[-1]
        job_rows = jobs.for_subject(version.id)
        return Accepted(existing, version, job_rows[-1] if job_rows else None, duplicate=True)

    # A new version means a new ingest job: refused here, before any row or object is
    # written, while the ingest queue is at its cap.
    _check_ingest_cap(docs)
    tags = sorted(set(meta.tags))
    document = documents.by_source_id(meta.source_id) if meta.source_id else None
    if document is None:
        document = documents.add(
            Document(
                source_id=meta.source_id,
                title=meta.title or filename_title(meta.filename),
                mime=mime,
                state=DocumentState.QUEUED,
                tags=tags,
            )
        )
        number = 1
    else:
        number = max((v.version for v in documents.versions(document.id)), default=0) + 1
        document.mime = mime
        if meta.title:
            document.title = meta.title
        if tags:
            document.tags = tags

    version_id = uuid.uuid4()
    key = raw_key(principal.tenant_id, incoming.sha256, version_id)
    version = documents.add_version(
        document,
        DocumentVersion(
            id=version_id,
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
            # source id + content hash + step (SPEC §3), the source being the document:
            # bounded in length whatever the client's source id, and a document deleted and
            # uploaded again is a new document with new jobs.
            idempotency_key=f"{principal.tenant_id}:{document.id}:{incoming.sha256}:ingest",
            params={"document_id": str(document.id), "version": number},
            max_attempts=docs.settings.job_max_attempts,
        )
    )

    try:
        docs.s3.fput_object(docs.bucket, key, str(incoming.path), content_type=mime)
    except S3Error as exc:
        raise Unavailable(
            "the object store refused the file; try again",
            retry_after=5,
            code="storage.unavailable",
        ) from exc
    _remove_on_rollback(docs, key)
    docs.outbox.add(INGEST_TASK, job.id)
    return Accepted(document, version, job, duplicate=False)


def _check_ingest_cap(docs: Documents) -> None:
    settings = docs.settings
    check_queue_cap(
        docs.session,
        docs.principal.tenant_id,
        JobKind.INGEST,
        per_tenant=settings.queue_cap_per_tenant,
        total=settings.queue_cap_total,
        retry_after=settings.queue_cap_retry_after_seconds,
    )


def receive(docs: Documents, stream: Readable, meta: UploadMeta, max_bytes: int) -> Accepted:
    """Both upload paths: spool the bytes, then accept them."""
    with spooled(stream, max_bytes) as incoming:
        return accept_document(docs, incoming, meta)


def receive_object(docs: Documents, key: str, meta: UploadMeta, measured: int) -> Accepted:
    """An object already in the store (a presigned upload), streamed into the same path as a
    multipart upload. Reading stops past ``measured`` bytes, the size a ``stat`` gave: the
    object may have been replaced by a larger one since."""
    response = docs.s3.get_object(docs.bucket, key)
    try:
        return receive(docs, response, meta, measured)
    except TooLarge as exc:
        raise TooLarge(
            "the uploaded file changed while it was read; upload it again",
            limit=measured,
            code="upload.changed",
        ) from exc
    finally:
        response.close()
        response.release_conn()


# --- presigned uploads -------------------------------------------------------------------------


@dataclass(frozen=True)
class PresignedPost:
    upload: Upload
    url: str
    fields: dict[str, str]


def create_presigned_upload(docs: Documents, meta: UploadMeta) -> PresignedPost:
    """A short-lived POST policy for one object under the tenant's prefix, at most
    ``max_upload_bytes`` big. A tenant has at most ``max_open_uploads`` open at once."""
    settings = docs.settings
    # Refused now rather than after the client sent the whole file.
    _check_ingest_cap(docs)
    uploads = UploadRepository(docs.session, docs.principal)
    now = datetime.now(UTC)
    count, soonest = uploads.open_uploads(now)
    if count >= settings.max_open_uploads:
        wait = (soonest - now).total_seconds() if soonest else settings.presign_ttl_seconds
        raise LimitExceeded(
            f"{settings.max_open_uploads} uploads are open already; complete them or wait "
            "until they expire",
            retry_after=wait,
            code="upload.too_many_open",
        )
    ttl = timedelta(seconds=settings.presign_ttl_seconds)
    upload_id = uuid.uuid4()
    key = tenant_key(docs.principal.tenant_id, "uploads", str(upload_id))
    upload = uploads.add(
        Upload(
            id=upload_id,
            object_key=key,
            filename=meta.filename,
            mime=meta.declared_mime,
            title=meta.title,
            source_id=meta.source_id,
            tags=meta.tags,
            expires_at=now + ttl,
        )
    )
    url, fields = docs.presigner.post_policy(docs.bucket, key, ttl, settings.max_upload_bytes)
    return PresignedPost(upload, url, fields)


def complete_upload(docs: Documents, upload_id: uuid.UUID) -> Accepted:
    """Accept what the client uploaded to its presigned URL, through the same path as a
    multipart upload. The object's size is checked with a ``stat`` before any byte is read,
    and the download stops past that size: an object replaced by a larger one in between is
    refused too."""
    settings = docs.settings
    upload = UploadRepository(docs.session, docs.principal).require_for_update(upload_id)
    if upload.completed_at is not None:
        raise Conflict(
            f"upload already completed as document {upload.document_id}",
            code="upload.completed",
        )
    if upload.expires_at <= datetime.now(UTC):
        raise Gone("the upload URL has expired; request a new one", code="upload.expired")
    try:
        stat = docs.s3.stat_object(docs.bucket, upload.object_key)
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
            raise Conflict("nothing was uploaded to this URL yet", code="upload.missing") from exc
        raise Unavailable(
            "the object store did not answer; try again", retry_after=5, code="storage.unavailable"
        ) from exc
    limit = settings.max_upload_bytes
    if stat.size is None or stat.size > limit:
        docs.s3.remove_object(docs.bucket, upload.object_key)
        raise _too_large(limit)
    meta = UploadMeta(
        filename=upload.filename,
        declared_mime=upload.mime,
        title=upload.title,
        source_id=upload.source_id,
        tags=list(upload.tags),
    )
    result = receive_object(docs, upload.object_key, meta, stat.size)
    upload.completed_at = datetime.now(UTC)
    upload.document_id = result.document.id
    key, s3, bucket = upload.object_key, docs.s3, docs.bucket
    docs.outbox.after_commit(lambda: s3.remove_object(bucket, key))
    return result


# --- reading and deleting ----------------------------------------------------------------------


def content_disposition(title: str, mime: str) -> str:
    """``attachment`` with the name in both RFC 6266 forms: an ASCII fallback (quotes, control
    characters and non-ASCII replaced) and the exact name in RFC 5987 encoding. The name is
    the document's title, with the extension of its type when the title has none."""
    name = filename_title(title)
    extension = EXTENSIONS.get(mime, "")
    if extension and not name.lower().endswith(extension):
        name += extension
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def download_url(
    docs: Documents, document_id: uuid.UUID, version: int | None
) -> tuple[str, datetime]:
    """A short-lived link to a version's bytes, always downloaded as a file (never shown
    inline, so an uploaded HTML page cannot run in the platform's origin)."""
    documents = DocumentRepository(docs.session, docs.principal)
    document = documents.require(document_id)
    versions = documents.versions(document.id)
    wanted = version or document.current_version or (versions[-1].version if versions else None)
    chosen = next((v for v in versions if v.version == wanted), None)
    if chosen is None:
        raise NotFound("version", wanted)
    mime = "application/octet-stream" if document.mime in ACTIVE_TYPES else document.mime
    ttl = timedelta(seconds=docs.settings.download_ttl_seconds)
    url = docs.presigner.get_url(
        docs.bucket,
        chosen.object_key,
        ttl,
        {
            "response-content-type": mime,
            "response-content-disposition": content_disposition(document.title, document.mime),
        },
    )
    return url, datetime.now(UTC) + ttl


def delete_document(docs: Documents, index: ChunkIndex, document_id: uuid.UUID) -> None:
    documents = DocumentRepository(docs.session, docs.principal)
    document = documents.require(document_id)
    jobs = JobRepository(docs.session, docs.principal)
    for version in documents.versions(document.id):
        for job in jobs.for_subject(version.id):
            jobs.request_cancel(job)
    index.delete_document(docs.principal.tenant_id, document.id)
    keys = sorted({v.object_key for v in documents.versions(document.id)})
    documents.delete(document)  # versions and chunk rows go with it (ON DELETE CASCADE)
    s3, bucket = docs.s3, docs.bucket

    def remove_objects() -> None:
        # Only after the rows are gone for good: a failed commit must not lose the file.
        for key in keys:
            s3.remove_object(bucket, key)

    docs.outbox.after_commit(remove_objects)
