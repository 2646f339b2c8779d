from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from haven.contracts.text import Filename, MimeType, SourceId, Tag, Title
from haven.db.tables import DocumentState, JobState

MAX_TAGS = 50


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
    lang: str = Field(
        default="und",
        description="main language of the current version (ISO 639-1; und: not determined)",
    )
    created_at: datetime
    updated_at: datetime

    @field_validator("lang", mode="before")
    @classmethod
    def _undetermined_until_indexed(cls, value: object) -> object:
        return "und" if value is None else value


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
    filename: Filename
    mime: MimeType | None = None
    title: Title | None = None
    source_id: SourceId | None = None
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)


class PresignedUpload(BaseModel):
    """Where the client sends the file: an HTML-form style POST to ``url`` with every entry of
    ``fields`` as a form field and the file last, as the ``file`` field. The store itself
    refuses a file over ``max_bytes`` (the policy's content-length-range)."""

    upload_id: uuid.UUID
    url: str
    method: str = "POST"
    fields: dict[str, str]
    expires_at: datetime
    max_bytes: int


class DownloadLink(BaseModel):
    url: str
    expires_at: datetime
