"""What the maintenance admin API returns."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from haven.db.tables import JobState


class MaintenanceRunRead(BaseModel):
    """One run of a task: its job, and the report it wrote when it finished."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    state: JobState
    params: dict[str, Any]
    progress_done: int
    progress_total: int
    attempts: int
    last_error: str | None
    last_error_message: str | None
    result: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class MaintenanceTaskRead(BaseModel):
    name: str
    description: str
    # The cron expression (UTC) beat runs it on, or "off".
    schedule: str
    lock_seconds: int
    last_run: MaintenanceRunRead | None
    last_success: MaintenanceRunRead | None


class MaintenanceRunCreated(BaseModel):
    """``created`` False: a run of the task was already queued or running; this is it."""

    created: bool
    run: MaintenanceRunRead
