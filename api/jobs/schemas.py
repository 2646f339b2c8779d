from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from haven.db.tables import JobKind, JobState


class JobRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    kind: JobKind
    state: JobState
    subject_id: uuid.UUID | None
    progress_done: int
    progress_total: int
    attempts: int
    max_attempts: int
    # A stable reason code (``extract.timeout``, ``worker.lost``) and a sentence for people.
    last_error: str | None
    last_error_message: str | None
    retries: int
    cancel_requested: bool
    params: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class DeadLetterRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    job_id: uuid.UUID | None
    task: str
    queue: str
    reason: str | None
    created_at: datetime
    replayed_at: datetime | None
