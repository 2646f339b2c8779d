from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from api.jobs.schemas import JobRead
from haven.contracts.text import FreeText, SourceId
from haven.db.tables import AnalysisKind, JobState

# A hard cap whatever the configured limit (analyze_max_documents answers 413 below it).
MAX_REFERENCES = 1000
Instructions = Annotated[FreeText, StringConstraints(min_length=1, max_length=8000)]


class AnalysisCreate(BaseModel):
    """What to analyse (``document_ids`` or ``source_ids``) and how: ``summary``,
    ``extract`` (``output`` is the JSON Schema the result validates against) or ``custom``
    (``instructions`` applied to every part, then combined)."""

    model_config = ConfigDict(extra="forbid")

    document_ids: list[uuid.UUID] | None = Field(default=None, max_length=MAX_REFERENCES)
    source_ids: list[SourceId] | None = Field(default=None, max_length=MAX_REFERENCES)
    kind: AnalysisKind
    instructions: Instructions | None = None
    output: dict[str, Any] | None = None
    # Generate again even when the same analysis, or its steps, are stored already.
    force: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> AnalysisCreate:
        if not self.document_ids and not self.source_ids:
            raise ValueError("give document_ids or source_ids")
        if self.document_ids and self.source_ids:
            raise ValueError("give document_ids or source_ids, not both")
        if self.kind is AnalysisKind.EXTRACT and self.output is None:
            raise ValueError("an extract analysis needs output: the JSON Schema of its result")
        if self.kind is not AnalysisKind.EXTRACT and self.output is not None:
            raise ValueError("output (a JSON Schema) is only for extract analyses")
        if self.kind is AnalysisKind.CUSTOM and not self.instructions:
            raise ValueError("a custom analysis needs instructions")
        return self


class SourceRead(BaseModel):
    document_id: uuid.UUID
    version: int
    title: str
    content_sha256: str


class AnalysisRead(BaseModel):
    id: uuid.UUID
    kind: AnalysisKind
    state: JobState | None
    # Where it is, for people: "map 37/120".
    progress: str | None
    phase: str | None
    instructions: str | None
    output: dict[str, Any] | None
    force: bool
    sources: list[SourceRead]
    # A source document was deleted or serves a newer version than the one analysed.
    stale: bool
    stale_reasons: list[str]
    result: dict[str, Any] | None
    model: dict[str, Any]
    has_markdown: bool
    has_json: bool
    # Generations the run that finished made (0: every step was stored already).
    llm_calls: int
    error: str | None
    error_message: str | None
    job: JobRead | None
    # The same request was answered by this existing analysis.
    reused: bool = False
    created_at: datetime
    updated_at: datetime


class AnalysisPage(BaseModel):
    items: list[AnalysisRead]
    total: int
    offset: int
    limit: int
