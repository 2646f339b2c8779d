from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from haven.db.tables import DocumentState, JobState

TAG = Field(min_length=1, max_length=100)


class VersionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    version: int
    content_sha256: str
    size_bytes: int
    state: DocumentState
    created_at: datetime


class DocumentRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    source_id: str | None
    title: str
    mime: str
    state: DocumentState
    tags: list[str]
    current_version: int | None
    created_at: datetime
    updated_at: datetime


class DocumentDetail(DocumentRead):
    versions: list[VersionRead]
    chunks: int


class DocumentPage(BaseModel):
    items: list[DocumentRead]
    total: int
    offset: int
    limit: int


class UploadAccepted(BaseModel):
    document: DocumentRead
    version: int
    job_id: uuid.UUID | None
    job_state: JobState | None
    duplicate: bool = Field(description="the same bytes were already uploaded to this tenant")


class PresignRequest(BaseModel):
    filename: str = Field(min_length=1, max_length=500)
    mime: str | None = Field(default=None, max_length=200)
    title: str | None = Field(default=None, max_length=500)
    source_id: str | None = Field(default=None, min_length=1, max_length=500)
    tags: list[str] = Field(default_factory=list, max_length=50)


class PresignedUpload(BaseModel):
    upload_id: uuid.UUID
    url: str
    method: str = "PUT"
    expires_at: datetime
    max_bytes: int


class DownloadLink(BaseModel):
    url: str
    expires_at: datetime
