"""Settings of the nightly maintenance: its schedule (``HAVEN_MAINTENANCE_*``), read by the
workers (beat) and the API (which shows it), and the backups (``HAVEN_BACKUP_*``), read by the
workers and by ``haven restore``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class MaintenanceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HAVEN_MAINTENANCE_", extra="ignore")

    # Cron expressions (UTC) by task name, overriding the tasks' defaults; "off" leaves a
    # task to operators. A JSON object: {"backup": "30 1 * * *", "stale-uploads": "off"}.
    schedule: dict[str, str] = {}
    # False: beat enqueues no maintenance task at all (tests, or a node that must not run
    # them); operators still run them with `haven maintenance run` or the admin API.
    scheduled: bool = True
    # Attempts a maintenance job gets (a failed backup is retried with backoff, then fails
    # and alerts).
    max_attempts: int = Field(default=2, ge=1, le=10)

    @field_validator("schedule", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(
                    'HAVEN_MAINTENANCE_SCHEDULE must be a JSON object {"task": "cron"}'
                ) from exc
        if not isinstance(value, dict):
            raise ValueError('HAVEN_MAINTENANCE_SCHEDULE must be a JSON object {"task": "cron"}')
        return value


class BackupSettings(BaseSettings):
    """Where backups go: never the storage node they protect. ``target=folder`` writes under
    ``folder`` (a mounted volume of another machine); ``target=s3`` writes to a second S3
    endpoint and bucket."""

    model_config = SettingsConfigDict(env_prefix="HAVEN_BACKUP_", extra="ignore")

    target: Literal["folder", "s3"] = "folder"
    folder: Path = Path("var/backups")
    s3_endpoint: str | None = None
    s3_bucket: str = "haven-backups"
    s3_access_key: str = "haven"
    s3_secret_key: SecretStr = SecretStr("")
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    # Retention: the newest backup of each of the last N days, and of each of the last M
    # ISO weeks, are kept; every other complete backup is deleted.
    keep_daily: int = Field(default=7, ge=1)
    keep_weekly: int = Field(default=4, ge=0)
    # The PostgreSQL client tools; their major version must be the server's.
    pg_dump: str = "pg_dump"
    pg_restore: str = "pg_restore"
    # Queries whose top-10 ids (dense, lexical, hybrid) are recorded at backup time and
    # compared after a restore. Empty: the backup takes the headings of the first chunks.
    verify_queries: list[str] = []
    verify_query_count: int = Field(default=20, ge=0, le=200)
    # "export": the vectors are in the backup (every point, read through the store);
    # "none": they are not, and a restore re-indexes from PostgreSQL and the objects.
    vectors: Literal["export", "none"] = "export"
    # Part size of streamed object copies.
    part_bytes: int = Field(default=16 * 1024 * 1024, ge=5 * 1024 * 1024)

    @model_validator(mode="after")
    def _target_is_complete(self) -> BackupSettings:
        if self.target == "s3" and not self.s3_endpoint:
            raise ValueError("HAVEN_BACKUP_TARGET=s3 needs HAVEN_BACKUP_S3_ENDPOINT")
        return self
