"""Request and response shapes of code runs, who may run code, and the error registry."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from haven.contracts.text import FreeText
from haven.db.tables import JobState

MAX_CODE_CHARS = 256 * 1024
MAX_STDIN_CHARS = 256 * 1024
# A zip of a small project, base64 (4/3 of its bytes): within the API's JSON body limit.
MAX_ZIP_BASE64_CHARS = 3 * 1024 * 1024

LanguageName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_+-]{0,31}$")]
Arg = Annotated[FreeText, StringConstraints(max_length=1000)]
Pattern = Annotated[FreeText, StringConstraints(min_length=1, max_length=500)]
SubjectKind = Literal["user", "api_key"]


class RunCreate(BaseModel):
    """A snippet (``code``) or a small project (``files_zip``: a zip, base64), not both."""

    model_config = ConfigDict(extra="forbid")

    language: LanguageName
    code: Annotated[FreeText, StringConstraints(max_length=MAX_CODE_CHARS)] | None = None
    files_zip: Annotated[str, StringConstraints(max_length=MAX_ZIP_BASE64_CHARS)] | None = None
    stdin: Annotated[FreeText, StringConstraints(max_length=MAX_STDIN_CHARS)] = ""
    args: list[Arg] = Field(default_factory=list, max_length=32)

    @field_validator("files_zip")
    @classmethod
    def _not_empty(cls, value: str | None) -> str | None:
        if value is not None and not value:
            raise ValueError("files_zip is empty")
        return value


class RunRead(BaseModel):
    id: uuid.UUID
    job_id: uuid.UUID | None
    state: JobState | None
    language: str
    created_at: datetime
    # Why the run could not be done (``sandbox.unavailable``, ``run.language``).
    error: str | None = None
    error_message: str | None = None
    exit_code: int | None = None
    signal: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    wall_seconds: float | None = None
    cpu_seconds: float | None = None
    peak_memory_bytes: int | None = None
    limit_hit: str | None = None
    overshoot_ms: float | None = None
    limits: dict[str, Any] | None = None
    isolation: dict[str, Any] | None = None
    explanation: dict[str, Any] | None = None


class RunAccessUpsert(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject_kind: SubjectKind = "user"
    subject_id: uuid.UUID
    # Runs a day; None: the installation's default.
    daily_quota: int | None = Field(default=None, ge=0, le=1_000_000)


class RunAccessRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    subject_kind: str
    subject_id: uuid.UUID
    daily_quota: int | None
    created_at: datetime


class ErrorPatternCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    language: LanguageName = "python"
    error_type: Annotated[FreeText, StringConstraints(min_length=1, max_length=200)] | None = None
    message_regex: Pattern | None = None
    code_regex: Pattern | None = None
    title: Annotated[FreeText, StringConstraints(min_length=1, max_length=200)]
    explanation: Annotated[FreeText, StringConstraints(min_length=1, max_length=5000)]
    hint: Annotated[FreeText, StringConstraints(max_length=2000)] = ""
    priority: int = Field(default=0, ge=-1000, le=1000)
    enabled: bool = True


class ErrorPatternUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    error_type: Annotated[FreeText, StringConstraints(min_length=1, max_length=200)] | None = None
    message_regex: Pattern | None = None
    code_regex: Pattern | None = None
    title: Annotated[FreeText, StringConstraints(min_length=1, max_length=200)] | None = None
    explanation: Annotated[FreeText, StringConstraints(min_length=1, max_length=5000)] | None = None
    hint: Annotated[FreeText, StringConstraints(max_length=2000)] | None = None
    priority: int | None = Field(default=None, ge=-1000, le=1000)
    enabled: bool | None = None


class ErrorPatternRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    shared: bool
    language: str
    error_type: str | None
    message_regex: str | None
    code_regex: str | None
    title: str
    explanation: str
    hint: str
    priority: int
    enabled: bool
    # Runs of this tenant the entry explained.
    hits: int = 0
