"""The reviews contract (fixed: course platforms already call it)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from haven.db.tables import JobState


class ReviewAccepted(BaseModel):
    task_id: uuid.UUID
    status: JobState
    # True when the same submission (student, assignment, commit, archives) was already there.
    duplicate: bool = False


class Publication(BaseModel):
    state: str  # pending | delivered | failed
    attempts: int
    delivered_to: str | None
    delivered_at: datetime | None
    last_error: str | None


class ReviewRead(BaseModel):
    task_id: uuid.UUID
    status: JobState
    student_id: str
    assignment_id: str
    new_commit: str
    old_commit: str | None
    created_at: datetime
    finished_at: datetime | None
    result: dict[str, Any] | None
    job_id: uuid.UUID | None
    progress_done: int
    progress_total: int
    # Why a failed review failed: a stable code and a sentence.
    error: str | None
    error_message: str | None
    publication: Publication | None


class ReviewPage(BaseModel):
    items: list[ReviewRead]
    total: int
