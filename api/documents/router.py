"""Documents: upload (multipart or presigned), list, read, download, delete."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Query, Response, UploadFile, status

from api.deps import (
    CurrentPrincipal,
    EditorPrincipal,
    OutboxDep,
    RuntimeDep,
    SessionDep,
)
from api.documents import service
from api.documents.schemas import (
    MAX_TAGS,
    DocumentDetail,
    DocumentPage,
    DocumentRead,
    DownloadLink,
    PresignedUpload,
    PresignRequest,
    UploadAccepted,
    VersionRead,
)
from api.pagination import Page, pagination
from haven.answer_cache import invalidate_documents
from haven.auth.principal import Principal
from haven.contracts.text import SourceId, Tag, Title
from haven.db.repositories import DocumentRepository
from haven.db.tables import DocumentState

router = APIRouter(prefix="/api/v1/documents", tags=["documents"])


def _documents(
    session: SessionDep, outbox: OutboxDep, runtime: RuntimeDep, principal: Principal
) -> service.Documents:
    return service.Documents(
        session=session,
        principal=principal,
        outbox=outbox,
        s3=runtime.s3,
        presigner=runtime.presigner,
        settings=runtime.settings,
    )


def _editor_documents(
    session: SessionDep, outbox: OutboxDep, runtime: RuntimeDep, principal: EditorPrincipal
) -> service.Documents:
    return _documents(session, outbox, runtime, principal)


def _reader_documents(
    session: SessionDep, outbox: OutboxDep, runtime: RuntimeDep, principal: CurrentPrincipal
) -> service.Documents:
    return _documents(session, outbox, runtime, principal)


EditorDocuments = Annotated[service.Documents, Depends(_editor_documents)]
ReaderDocuments = Annotated[service.Documents, Depends(_reader_documents)]


def _accepted(result: service.Accepted, response: Response) -> UploadAccepted:
    # 201 for a new document or version, 200 when the same bytes were there already.
    response.status_code = status.HTTP_200_OK if result.duplicate else status.HTTP_201_CREATED
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
    docs: EditorDocuments,
    response: Response,
    title: Annotated[Title | None, Form()] = None,
    source_id: Annotated[SourceId | None, Form()] = None,
    tags: Annotated[list[Tag] | None, Form(max_length=MAX_TAGS)] = None,
) -> UploadAccepted:
    meta = service.UploadMeta(
        filename=file.filename or "upload",
        declared_mime=file.content_type,
        title=title,
        source_id=source_id,
        tags=tags or [],
    )
    result = service.receive(docs, file.file, meta, docs.settings.max_upload_bytes)
    return _accepted(result, response)


@router.post("/uploads", response_model=PresignedUpload, status_code=status.HTTP_201_CREATED)
def create_upload(body: PresignRequest, docs: EditorDocuments) -> PresignedUpload:
    meta = service.UploadMeta(
        filename=body.filename,
        declared_mime=body.mime,
        title=body.title,
        source_id=body.source_id,
        tags=body.tags,
    )
    created = service.create_presigned_upload(docs, meta)
    return PresignedUpload(
        upload_id=created.upload.id,
        url=created.url,
        fields=created.fields,
        expires_at=created.upload.expires_at,
        max_bytes=docs.settings.max_upload_bytes,
    )


@router.post(
    "/uploads/{upload_id}/complete",
    response_model=UploadAccepted,
    status_code=status.HTTP_201_CREATED,
)
def complete_upload(
    upload_id: uuid.UUID, docs: EditorDocuments, response: Response
) -> UploadAccepted:
    return _accepted(service.complete_upload(docs, upload_id), response)


@router.get("", response_model=DocumentPage)
def list_documents(
    session: SessionDep,
    principal: CurrentPrincipal,
    page: Annotated[Page, pagination(default_limit=50, max_limit=200)],
    state: DocumentState | None = None,
    tag: Annotated[Tag | None, Query()] = None,
) -> DocumentPage:
    rows, total = DocumentRepository(session, principal).list_filtered(
        state=state, tag=tag, offset=page.offset, limit=page.limit
    )
    return DocumentPage(
        items=[DocumentRead.model_validate(d) for d in rows],
        total=total,
        offset=page.offset,
        limit=page.limit,
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
    docs: ReaderDocuments,
    version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> DownloadLink:
    url, expires_at = service.download_url(docs, document_id, version)
    return DownloadLink(url=url, expires_at=expires_at)


@router.delete("/{document_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_document(document_id: uuid.UUID, docs: EditorDocuments, runtime: RuntimeDep) -> Response:
    service.delete_document(docs, runtime.index, document_id)
    tenant_id = docs.principal.tenant_id
    docs.outbox.after_commit(lambda: invalidate_documents(runtime.redis, tenant_id, [document_id]))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
