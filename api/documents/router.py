"""Documents: upload (multipart or presigned), list, read, download, delete."""

from __future__ import annotations

import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Query, Response, UploadFile, status
from minio.error import S3Error
from sqlalchemy.orm import Session

from api.deps import (
    CurrentPrincipal,
    EditorPrincipal,
    OutboxDep,
    RuntimeDep,
    SessionDep,
)
from api.documents import service
from api.documents.schemas import (
    TAG,
    DocumentDetail,
    DocumentPage,
    DocumentRead,
    DownloadLink,
    PresignedUpload,
    PresignRequest,
    UploadAccepted,
    VersionRead,
)
from api.outbox import JobOutbox
from api.runtime import ApiRuntime
from haven.answer_cache import invalidate_documents
from haven.auth.principal import Principal
from haven.db.repositories import DocumentRepository, UploadRepository
from haven.db.tables import DocumentState

router = APIRouter(prefix="/api/v1/documents", tags=["documents"])


def _accept(
    runtime: ApiRuntime,
    session: Session,
    principal: Principal,
    outbox: JobOutbox,
    incoming: service.IncomingFile,
    *,
    title: str | None,
    source_id: str | None,
    tags: list[str],
) -> service.Accepted:
    """Both upload paths (multipart and presigned) end here."""
    return service.accept_document(
        session,
        principal,
        outbox,
        runtime.s3,
        runtime.settings.s3_bucket,
        incoming,
        title=title,
        source_id=source_id,
        tags=tags,
        max_attempts=runtime.settings.job_max_attempts,
    )


def _accepted(result: service.Accepted) -> UploadAccepted:
    return UploadAccepted(
        document=DocumentRead.model_validate(result.document),
        version=result.version.version,
        job_id=result.job.id if result.job else None,
        job_state=result.job.state if result.job else None,
        duplicate=result.duplicate,
    )


@router.post("", response_model=UploadAccepted, status_code=status.HTTP_201_CREATED)
def upload_document(
    file: Annotated[UploadFile, File(description="the document")],
    session: SessionDep,
    principal: EditorPrincipal,
    outbox: OutboxDep,
    runtime: RuntimeDep,
    response: Response,
    title: Annotated[str | None, Form(max_length=500)] = None,
    source_id: Annotated[str | None, Form(min_length=1, max_length=500)] = None,
    tags: Annotated[list[Annotated[str, TAG]] | None, Form()] = None,
) -> UploadAccepted:
    settings = runtime.settings
    with tempfile.TemporaryDirectory(prefix="haven-upload-") as tmp:
        path = Path(tmp) / "upload"
        with path.open("wb") as out:
            sha, size = service.hash_file(file.file, settings.max_upload_bytes, copy_to=out)
        incoming = service.IncomingFile(
            path=path,
            filename=file.filename or "upload",
            declared_mime=file.content_type,
            size=size,
            sha256=sha,
        )
        result = _accept(
            runtime,
            session,
            principal,
            outbox,
            incoming,
            title=title,
            source_id=source_id,
            tags=tags or [],
        )
    if result.duplicate:
        response.status_code = status.HTTP_200_OK
    return _accepted(result)


@router.post("/uploads", response_model=PresignedUpload, status_code=status.HTTP_201_CREATED)
def create_upload(
    body: PresignRequest, session: SessionDep, principal: EditorPrincipal, runtime: RuntimeDep
) -> PresignedUpload:
    ttl = timedelta(seconds=runtime.settings.presign_ttl_seconds)
    upload, url = service.create_presigned_upload(
        session,
        principal,
        runtime.s3,
        runtime.settings.s3_bucket,
        filename=body.filename,
        mime=body.mime,
        title=body.title,
        source_id=body.source_id,
        tags=body.tags,
        ttl=ttl,
    )
    return PresignedUpload(
        upload_id=upload.id,
        url=url,
        expires_at=upload.expires_at,
        max_bytes=runtime.settings.max_upload_bytes,
    )


@router.post("/uploads/{upload_id}/complete", response_model=UploadAccepted)
def complete_upload(
    upload_id: uuid.UUID,
    session: SessionDep,
    principal: EditorPrincipal,
    outbox: OutboxDep,
    runtime: RuntimeDep,
    response: Response,
) -> UploadAccepted:
    settings = runtime.settings
    uploads = UploadRepository(session, principal)
    upload = uploads.require_for_update(upload_id)
    if upload.completed_at is not None and upload.document_id is not None:
        document = DocumentRepository(session, principal).require(upload.document_id)
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"upload already completed as document {document.id}"
        )
    if upload.expires_at <= datetime.now(UTC):
        raise HTTPException(status.HTTP_410_GONE, "the upload URL has expired; request a new one")
    try:
        stat = runtime.s3.stat_object(settings.s3_bucket, upload.object_key)
    except S3Error as exc:
        raise HTTPException(
            status.HTTP_409_CONFLICT, "nothing was uploaded to this URL yet"
        ) from exc
    if stat.size is not None and stat.size > settings.max_upload_bytes:
        runtime.s3.remove_object(settings.s3_bucket, upload.object_key)
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"file is larger than {settings.max_upload_bytes} bytes",
        )
    with service.spooled_object(runtime.s3, settings.s3_bucket, upload.object_key) as path:
        with path.open("rb") as fh:
            sha, size = service.hash_file(fh, settings.max_upload_bytes)
        incoming = service.IncomingFile(
            path=path,
            filename=upload.filename,
            declared_mime=upload.mime,
            size=size,
            sha256=sha,
        )
        result = _accept(
            runtime,
            session,
            principal,
            outbox,
            incoming,
            title=upload.title,
            source_id=upload.source_id,
            tags=list(upload.tags),
        )
    upload.completed_at = datetime.now(UTC)
    upload.document_id = result.document.id
    key = upload.object_key
    outbox.after_commit(lambda: runtime.s3.remove_object(settings.s3_bucket, key))
    if not result.duplicate:
        response.status_code = status.HTTP_201_CREATED
    return _accepted(result)


@router.get("", response_model=DocumentPage)
def list_documents(
    session: SessionDep,
    principal: CurrentPrincipal,
    state: DocumentState | None = None,
    tag: Annotated[str | None, Query(max_length=100)] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> DocumentPage:
    rows, total = DocumentRepository(session, principal).list_filtered(
        state=state, tag=tag, offset=offset, limit=limit
    )
    return DocumentPage(
        items=[DocumentRead.model_validate(d) for d in rows],
        total=total,
        offset=offset,
        limit=limit,
    )


@router.get("/{document_id}", response_model=DocumentDetail)
def get_document(
    document_id: uuid.UUID, session: SessionDep, principal: CurrentPrincipal
) -> DocumentDetail:
    documents = DocumentRepository(session, principal)
    document = documents.require(document_id)
    return DocumentDetail(
        **DocumentRead.model_validate(document).model_dump(),
        versions=[VersionRead.model_validate(v) for v in documents.versions(document.id)],
        chunks=documents.chunk_count(document.id),
    )


@router.get("/{document_id}/download", response_model=DownloadLink)
def download_document(
    document_id: uuid.UUID,
    session: SessionDep,
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    version: Annotated[int | None, Query(ge=1)] = None,
) -> DownloadLink:
    documents = DocumentRepository(session, principal)
    document = documents.require(document_id)
    versions = documents.versions(document.id)
    wanted = version or document.current_version or (versions[-1].version if versions else None)
    chosen = next((v for v in versions if v.version == wanted), None)
    if chosen is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"version {wanted} not found")
    ttl = timedelta(seconds=runtime.settings.download_ttl_seconds)
    url = runtime.s3.presigned_get_object(
        runtime.settings.s3_bucket,
        chosen.object_key,
        expires=ttl,
        response_headers={"response-content-type": document.mime},
    )
    return DownloadLink(url=url, expires_at=datetime.now(UTC) + ttl)


@router.delete("/{document_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_document(
    document_id: uuid.UUID,
    session: SessionDep,
    principal: EditorPrincipal,
    outbox: OutboxDep,
    runtime: RuntimeDep,
) -> Response:
    service.delete_document(
        session,
        principal,
        outbox,
        runtime.s3,
        runtime.settings.s3_bucket,
        runtime.index,
        document_id,
    )
    outbox.after_commit(
        lambda: invalidate_documents(runtime.redis, principal.tenant_id, [document_id])
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
