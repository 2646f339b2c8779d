"""Settings shared by every Haven service.

Each service has one pydantic-settings class built once at start (``create_app`` / the
worker's start-up) and passed down. Values come from the environment (``HAVEN_*``) and from
Swarm secrets in ``/run/secrets`` (a file named after the variable, lower case). Defaults work
for local development; ``HAVEN_ENV=production`` refuses the development secrets, and no
environment but ``test`` accepts the published development signing key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
)

DEV_JWT_KEYS = '{"dev-1": "haven-development-signing-key-dev-1-change-me"}'
DEV_S3_SECRET = "haven-dev-secret"  # noqa: S105 - the known development value, refused in production
DEV_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/haven"
SECRETS_DIR_ENV = "HAVEN_SECRETS_DIR"


class HavenSettings(BaseSettings):
    """Base of every service's settings: environment, logging and the stores it talks to."""

    model_config = SettingsConfigDict(env_prefix="HAVEN_", extra="ignore")

    env: Literal["development", "test", "production"] = "development"
    log_level: str = "INFO"
    log_json: bool = True
    build_version: str = "dev"
    git_commit: str = "unknown"
    # --- logs to a file and tracing (operators) ---
    # JSON lines also go to this file (besides stdout), rotated every ``log_rotate_days``
    # days; ``log_retention_files`` rotated files are kept, older ones deleted.
    log_file: Path | None = None
    log_rotate_days: int = Field(default=3, ge=1)
    log_retention_files: int = Field(default=10, ge=1)
    # OpenTelemetry tracing, off unless set: the OTLP/HTTP endpoint of a collector
    # (e.g. http://otel-collector:4318); spans go to <endpoint>/v1/traces.
    otel_endpoint: str | None = None
    # --- end logs and tracing ---

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return sources_with_secrets(settings_cls, init_settings, env_settings)


def sources_with_secrets(
    settings_cls: type[BaseSettings],
    init_settings: PydanticBaseSettingsSource,
    env_settings: PydanticBaseSettingsSource,
) -> tuple[PydanticBaseSettingsSource, ...]:
    """Arguments, then the environment, then Swarm's secret files: Swarm mounts secrets under
    /run/secrets (``HAVEN_SECRETS_DIR`` moves it), read only when it exists so that local runs
    do not warn about a missing folder."""
    secrets_dir = Path(os.environ.get(SECRETS_DIR_ENV, "/run/secrets"))
    sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
    if secrets_dir.is_dir():
        sources.append(SecretsSettingsSource(settings_cls, secrets_dir=secrets_dir))
    return tuple(sources)


class StoreSettings(HavenSettings):
    """Connection settings of the data stores (SPEC §2)."""

    database_url: SecretStr = SecretStr(DEV_DATABASE_URL)
    database_pool_size: int = 10
    # Connections opened beyond the pool under load (closed again when idle).
    database_max_overflow: int = 10
    # Seconds a thread waits for a connection before the request fails.
    database_pool_timeout: float = 30.0
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672//")
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: str = "haven"
    s3_secret_key: SecretStr = SecretStr(DEV_S3_SECRET)
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    s3_bucket: str = "haven"
    models_bucket: str = "models"
    # Without a URL the vector store is qdrant-client's embedded mode in this folder.
    qdrant_url: str | None = Field(
        default=None, validation_alias=AliasChoices("HAVEN_QDRANT_URL", "QDRANT_URL")
    )
    qdrant_api_key: SecretStr | None = None
    qdrant_path: Path = Path("var/qdrant")
    qdrant_collection: str = "haven_chunks"
    # Seconds a process keeps the index pointer it read (haven.index_pointer): after a
    # re-index switch, every API replica and worker searches the new collection within this
    # long (the old one stays whole meanwhile).
    index_pointer_cache_seconds: float = Field(default=2.0, ge=0)
    # Every task message expires; a job whose message expired is re-sent by the reaper.
    task_expires_seconds: int = 86400
    # Attempts a job gets before it fails and its message goes to the dead-letter queue.
    job_max_attempts: int = 5
    # Manual retries (POST /jobs/{id}/retry) a job may get; each grants a fresh budget of
    # attempts and is audited. Past this, only a tenant admin's dead-letter replay retries it,
    # so a document that crashes workers cannot be sent to them without end.
    job_max_retries: int = 3
    # A running job whose worker sent no heartbeat for this long is taken over or requeued
    # (the reaper: after two leases); the API's /metrics counts such jobs as stuck.
    job_lease_seconds: int = 60
    # --- read-only mode (operators) ---
    # Seconds a process keeps the read-only switch it read from PostgreSQL: every API
    # replica and worker sees a change within this long.
    read_only_cache_seconds: float = Field(default=2.0, ge=0)
    # The Retry-After of a write refused in read-only mode, and how long a worker waits
    # before it looks again at a job it did not take.
    read_only_retry_after_seconds: int = Field(default=60, ge=1)
    # --- end read-only mode ---
    # -- token budgets (haven.budget): read by the API and by workers that call llm --------
    # The length of a budget period (tenants.token_budget is per period); periods start at
    # multiples of it since the Unix epoch, so a day starts at 00:00 UTC.
    budget_period_seconds: int = Field(default=24 * 3600, ge=60)
    # A reservation's lease: its process renews it every third of this; a dead process's
    # reservations are released this long after it stopped renewing.
    budget_lease_seconds: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _refuse_development_store_secrets(self) -> StoreSettings:
        if self.env == "production":
            if self.s3_secret_key.get_secret_value() == DEV_S3_SECRET:
                raise ValueError("HAVEN_S3_SECRET_KEY is the development value; set a real one")
            if self.database_url.get_secret_value() == DEV_DATABASE_URL:
                raise ValueError("HAVEN_DATABASE_URL is the development default; set a real one")
        return self


class AuthSettings(HavenSettings):
    """Signing keys of the API's tokens.

    ``jwt_keys`` maps key id to secret. The active key signs; every key in the set verifies,
    so a rotation is: add the next key, make it active, keep the old one until its tokens
    have expired, then remove it. With one key, it is the active one.

    There is no default key: a published key would let anyone mint tokens. Only the test
    environment falls back to the development key; every other environment refuses it, and
    ``haven up`` generates a key per installation.
    """

    jwt_keys: SecretStr | None = None
    jwt_active_kid: str = ""
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    access_token_minutes: int = 60
    api_key_token_minutes: int = 15
    # Seconds Redis keeps a caller's current state (active, role, token version) before it is
    # read again from PostgreSQL; every change writes the new state at once, so this only
    # bounds how long a change made while Redis was unreachable can go unseen.
    auth_state_ttl_seconds: int = Field(default=30, ge=1)
    # Sign-in throttling (Redis): failed attempts per username, attempts per client address,
    # in a window that starts at the first counted attempt.
    signin_failures_per_username: int = Field(default=10, ge=1)
    signin_attempts_per_address: int = Field(default=100, ge=1)
    signin_window_seconds: int = Field(default=900, ge=1)
    # Password checks (argon2, 64 MiB each) run at once; more wait their turn.
    password_check_concurrency: int = Field(default=4, ge=1)

    @field_validator("jwt_keys")
    @classmethod
    def _keys_are_a_json_object(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        try:
            keys = json.loads(value.get_secret_value())
        except json.JSONDecodeError as exc:
            raise ValueError("HAVEN_JWT_KEYS must be a JSON object {kid: secret}") from exc
        if not isinstance(keys, dict) or not keys:
            raise ValueError("HAVEN_JWT_KEYS must be a non-empty JSON object {kid: secret}")
        for kid, secret in keys.items():
            if not isinstance(secret, str) or len(secret) < 32:
                raise ValueError(f"JWT key {kid!r} must be a string of at least 32 characters")
        return value

    @model_validator(mode="after")
    def _keys_are_this_installations(self) -> AuthSettings:
        if self.jwt_keys is None:
            if self.env != "test":
                raise ValueError(
                    "HAVEN_JWT_KEYS is not set: give this installation its own signing key,"
                    ' e.g. {"k1": "<at least 32 random characters>"} (haven up generates one)'
                )
            self.jwt_keys = SecretStr(DEV_JWT_KEYS)
        keys = self.signing_keys()
        published = set(json.loads(DEV_JWT_KEYS).values())
        if self.env != "test" and set(keys.values()) & published:
            raise ValueError("HAVEN_JWT_KEYS contains the published development key; set your own")
        if not self.jwt_active_kid and len(keys) == 1:
            self.jwt_active_kid = next(iter(keys))
        if self.jwt_active_kid not in keys:
            raise ValueError(
                f"HAVEN_JWT_ACTIVE_KID {self.jwt_active_kid!r} is not in HAVEN_JWT_KEYS"
            )
        return self

    def signing_keys(self) -> dict[str, str]:
        if self.jwt_keys is None:
            return {}
        keys: dict[str, Any] = json.loads(self.jwt_keys.get_secret_value())
        return {str(kid): str(secret) for kid, secret in keys.items()}
