"""The API's settings: the stores, the token keys, and the API's own limits."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from haven.language import DEFAULT_LANGUAGES, parse_languages
from haven.review_settings import ReviewSettings
from haven.sandbox import SandboxSettings
from haven.settings import AuthSettings, StoreSettings


class ApiSettings(StoreSettings, AuthSettings):
    readiness_timeout_seconds: float = 3.0
    # What a code-review submission may be (HAVEN_REVIEW_*).
    review: ReviewSettings = Field(default_factory=ReviewSettings)
    cors_origins: list[str] = []
    max_upload_bytes: int = 100 * 1024 * 1024
    presign_ttl_seconds: int = Field(default=900, ge=1, le=7 * 24 * 3600)
    # Where clients reach the object store, e.g. https://haven.example.org/objects (nginx
    # passes that path to MinIO): presigned URLs are signed for this host. Unset, they point
    # at HAVEN_S3_ENDPOINT itself, which suits a single machine.
    s3_public_url: str | None = None
    # Presigned uploads a tenant may have open (neither completed nor expired) at once.
    max_open_uploads: int = Field(default=20, ge=1)
    # Any request body but a multipart upload (JSON, forms): 413 past this many bytes.
    max_json_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    download_ttl_seconds: int = 300
    emb_url: str = "http://127.0.0.1:8082"
    # The dense alias queries are embedded with (the index holds one vector per alias).
    search_alias: str = "minilm"
    search_candidates: int = 100
    # Languages a query's language is detected among (ISO 639-1, comma-separated), as the
    # workers' HAVEN_LANGUAGES. A query in a language the search alias's model does not
    # declare is searched by the lexical channel alone (haven.search).
    languages: Annotated[list[str], NoDecode] = list(DEFAULT_LANGUAGES)

    @field_validator("languages", mode="before")
    @classmethod
    def _known_languages(cls, value: Any) -> Any:
        return list(parse_languages(value))

    llm_url: str = "http://127.0.0.1:8083"
    # The longest answer the chat asks the model for; the prompt's passages fill the rest
    # of the model's context.
    chat_max_answer_tokens: int = Field(default=512, ge=16)
    # Earlier messages of the chat put into the prompt (newest first, within a quarter of
    # the context).
    chat_history_messages: int = Field(default=10, ge=0, le=100)
    chat_temperature: float = Field(default=0.2, ge=0.0, le=2.0)
    # A comment line on an idle stream, so proxies and browsers keep it open.
    chat_heartbeat_seconds: float = Field(default=15.0, gt=0)
    answer_cache_ttl_seconds: int = Field(default=24 * 3600, ge=0)
    # --- code runs (api/runs) ---
    # The languages and submission limits the runner has (HAVEN_SANDBOX_*, shared with it).
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
    # Runs a day of an allow-listed user or API key whose entry sets no quota of its own.
    runs_daily_quota: int = Field(default=200, ge=0)
    # --- queue caps (operators) ---
    # Jobs of a workload (job kind) that may wait at once: per tenant (past it: 429) and in
    # total (past it: 503), as JSON objects, e.g. HAVEN_QUEUE_CAP_PER_TENANT='{"ingest": 500}'.
    # A kind missing from a map has no such cap.
    queue_cap_per_tenant: dict[str, int] = {"ingest": 1000}
    queue_cap_total: dict[str, int] = {"ingest": 10000}
    queue_cap_retry_after_seconds: int = Field(default=30, ge=1)
    # --- end queue caps ---
    # --- analyses (POST /api/v1/analyses) ---
    # Documents one analysis may read, and their tokens in all (estimated from their chunks
    # at request time; the worker counts them exactly in the model's tokens).
    analyze_max_documents: int = Field(default=20, ge=1)
    analyze_max_input_tokens: int = Field(default=2_000_000, ge=1)
    analyze_max_schema_bytes: int = Field(default=64 * 1024, ge=256)
    # -- rate limits and stream caps (haven.ratelimit, haven.streams); a tenant's own values
    # (PUT /api/v1/admin/tenants/{id}/limits) replace these defaults.
    rate_tenant_per_second: float = Field(default=200.0, gt=0)
    rate_tenant_burst: int = Field(default=2000, ge=1)
    # Per user or API key.
    rate_caller_per_second: float = Field(default=50.0, gt=0)
    rate_caller_burst: int = Field(default=500, ge=1)
    # Answer streams (chat SSE, OpenAI stream=true) open at once.
    streams_per_tenant: int = Field(default=64, ge=1)
    streams_per_caller: int = Field(default=8, ge=1)
    # A stream's lease in Redis, renewed while it streams: how long a crashed API process's
    # streams still count.
    stream_lease_seconds: float = Field(default=30.0, gt=0)
    # How long a tenant's limits are kept in each API process before they are read again.
    tenant_limits_ttl_seconds: float = Field(default=10.0, ge=0)
    # --- browser sessions (POST /api/v1/auth/session, the web app's httpOnly cookie) ---
    # A session unused this long ends (every refresh renews it) ...
    session_idle_minutes: int = Field(default=12 * 60, ge=1)
    # ... and any session ends this long after sign-in, however busy.
    session_max_hours: int = Field(default=7 * 24, ge=1)
    # The cookie's Secure flag: on when the site is served over HTTPS. Unset: on in
    # production, off otherwise (``haven up`` serves http://127.0.0.1, where a Secure cookie
    # would never be sent back).
    session_cookie_secure: bool | None = None

    @property
    def session_cookie_is_secure(self) -> bool:
        if self.session_cookie_secure is None:
            return self.env == "production"
        return self.session_cookie_secure

    # --- the web app (api.web) ---
    # A folder holding the web app's static export (web/out), served at / by the API itself;
    # ``haven up`` sets it to the checkout's web/out once that is built. A folder that does
    # not exist serves nothing (the API still starts).
    web_dir: Path | None = None
