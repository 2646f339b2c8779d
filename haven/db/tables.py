"""ORM tables (SQLAlchemy 2.0, typed). Changes go through an Alembic migration.

Every tenant-owned table carries ``tenant_id``; only the repositories in
``haven.db.repositories`` query them, and they add the tenant filter themselves.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Enum,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSONB, list[str]: ARRAY(String)}


def _enum(cls: type[enum.Enum]) -> Enum:
    return Enum(
        cls,
        native_enum=False,
        length=32,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class Role(enum.StrEnum):
    """Tenant roles, weakest first. ``admin`` is the platform administrator."""

    VIEWER = "viewer"
    EDITOR = "editor"
    TENANT_ADMIN = "tenant_admin"
    ADMIN = "admin"


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    READY = "ready"
    FAILED = "failed"
    CANCELED = "canceled"


class JobKind(enum.StrEnum):
    """What a job does; each kind is a handler on the workers' job runner (``workers.jobs``)
    and is sent to its workload's queue (``haven.queueing.JOB_TASKS``)."""

    INGEST = "ingest"
    ANALYZE = "analyze"
    REVIEW = "review"
    RUN = "run"
    MAINTENANCE = "maintenance"
    # The runner checking itself: a job that only waits, for operators and tests to see a
    # worker claim, renew, finish, retry and dead-letter a job end to end. No API creates it.
    PROBE = "probe"


class DocumentState(enum.StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    READY = "ready"
    FAILED = "failed"
    CANCELED = "canceled"


class Timestamped:
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now(), nullable=False
    )


def _uuid_pk() -> Mapped[uuid.UUID]:
    return mapped_column(primary_key=True, default=uuid.uuid4)


def _tenant_fk() -> Mapped[uuid.UUID]:
    return mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True, nullable=False)


# The platform's own tenant: it owns the platform-wide maintenance jobs (every job belongs to a
# tenant), is inactive and has no users; created by the ``0005_maintenance`` migration. It is
# not a customer's tenant: ``PlatformRepository`` neither lists nor finds it.
PLATFORM_TENANT_ID = uuid.UUID("00000000-0000-0000-0000-000000000001")
PLATFORM_TENANT_SLUG = "_platform"  # no API-created slug starts with "_"
PLATFORM_TENANT_NAME = "Platform (maintenance)"


class Tenant(Timestamped, Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = _uuid_pk()
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")
    # Tokens a tenant may spend per day; None means unlimited.
    token_budget: Mapped[int | None] = mapped_column(BigInteger)
    # Rate limits and stream caps of this tenant (``haven.limits_policy.TenantLimits``);
    # a missing field takes the platform default.
    limits: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")


class User(Timestamped, Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = _tenant_fk()
    username: Mapped[str] = mapped_column(String(200), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[Role] = mapped_column(_enum(Role))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")
    # Tokens carry the version they were issued at; raising it ends every session of the user
    # (password change, disable, role change).
    token_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class ApiKey(Timestamped, Base):
    """An application's key. Only its sha256 is stored; the key itself is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = _tenant_fk()
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    role: Mapped[Role] = mapped_column(_enum(Role))
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Document(Timestamped, Base):
    __tablename__ = "documents"
    __table_args__ = (UniqueConstraint("tenant_id", "source_id"),)

    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = _tenant_fk()
    source_id: Mapped[str | None] = mapped_column(String(500))
    title: Mapped[str] = mapped_column(String(500))
    mime: Mapped[str] = mapped_column(String(200))
    state: Mapped[DocumentState] = mapped_column(_enum(DocumentState))
    tags: Mapped[list[str]] = mapped_column(default=list, server_default="{}")
    current_version: Mapped[int | None] = mapped_column(Integer)
    # The main language of the current version (ISO 639-1, or "und"): the language most of
    # its chunks' text is in (haven.language).
    lang: Mapped[str] = mapped_column(String(8), default="und", server_default="und")


class DocumentVersion(Base):
    __tablename__ = "document_versions"
    __table_args__ = (
        UniqueConstraint("document_id", "version"),
        Index("ix_document_versions_tenant_sha", "tenant_id", "content_sha256"),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = _tenant_fk()
    document_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("documents.id", ondelete="CASCADE"), index=True
    )
    version: Mapped[int] = mapped_column(Integer)
    content_sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    object_key: Mapped[str] = mapped_column(String(1000))
    state: Mapped[DocumentState] = mapped_column(_enum(DocumentState))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Chunk(Base):
    """A chunk's metadata. Its vectors live in Qdrant under the same id."""

    __tablename__ = "chunks"
    __table_args__ = (UniqueConstraint("version_id", "position"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)  # deterministic, see ingest
    tenant_id: Mapped[uuid.UUID] = _tenant_fk()
    document_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("documents.id", ondelete="CASCADE"), index=True
    )
    version_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("document_versions.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer)
    page: Mapped[int | None] = mapped_column(Integer)
    heading: Mapped[str | None] = mapped_column(Text)
    token_count: Mapped[int] = mapped_column(Integer)
    text_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # The chunk's language (ISO 639-1, or "und"), as in the index's `lang` payload.
    lang: Mapped[str] = mapped_column(String(8), default="und", server_default="und")


class Job(Timestamped, Base):
    """One state machine for every job kind: queued → running → ready | failed | canceled.

    ``attempts`` counts claims (a redelivery after a worker died is one); the attempt that
    holds a running job is the one whose number equals it, and every write of a run checks
    that, so a run that lost its job can never change it. ``last_error`` is a stable reason
    code (``extract.timeout``, ``worker.lost``), ``last_error_message`` a short sentence for
    people; the exception itself goes only to the log."""

    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = _tenant_fk()
    kind: Mapped[JobKind] = mapped_column(_enum(JobKind))
    state: Mapped[JobState] = mapped_column(_enum(JobState), index=True)
    subject_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    idempotency_key: Mapped[str] = mapped_column(String(300), unique=True)
    progress_done: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    progress_total: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    max_attempts: Mapped[int] = mapped_column(Integer, default=5, server_default="5")
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_message: Mapped[str | None] = mapped_column(String(500))
    # Manual retries (API retry, dead-letter replay): each grants a fresh budget of attempts.
    retries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    params: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # What a finished run reported (maintenance tasks: what they found and did).
    result: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")


class Chat(Timestamped, Base):
    """A user's chat (private to them, deleted with them), or, with no user, a chat of the
    tenant's applications (API keys)."""

    __tablename__ = "chats"

    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = _tenant_fk()
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    title: Mapped[str] = mapped_column(String(500))


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = _tenant_fk()
    chat_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("chats.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    citations: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    usage: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Review(Timestamped, Base):
    __tablename__ = "reviews"
    __table_args__ = (
        Index("ux_reviews_tenant_idempotency", "tenant_id", "idempotency_key", unique=True),
        Index(
            "ix_reviews_tenant_student_assignment",
            "tenant_id",
            "student_id",
            "assignment_id",
            "created_at",
        ),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = _tenant_fk()
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), index=True
    )
    student_id: Mapped[str] = mapped_column(String(200))
    assignment_id: Mapped[str] = mapped_column(String(200))
    new_commit: Mapped[str] = mapped_column(String(200))
    old_commit: Mapped[str | None] = mapped_column(String(200))
    result: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    score: Mapped[float | None] = mapped_column()
    # Who submitted it (a user or an API key), and what: the same student, assignment,
    # commit and archive hashes submitted again is the same review (``idempotency_key``).
    created_by: Mapped[uuid.UUID | None] = mapped_column()
    idempotency_key: Mapped[str | None] = mapped_column(String(64))
    new_sha256: Mapped[str | None] = mapped_column(String(64))
    old_sha256: Mapped[str | None] = mapped_column(String(64))
    logs_sha256: Mapped[str | None] = mapped_column(String(64))
    # The archives in the object store, by part (``new``, ``old``, ``logs``).
    objects: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ReviewDelivery(Timestamped, Base):
    """The transactional outbox of review results: written in the transaction that stores the
    result, delivered by the workers to the publish endpoint (or its fallback) with retries.
    ``log`` records every attempt; ``idempotency_key`` travels in the payload so a receiver
    can tell a redelivery after a crash from a new result."""

    __tablename__ = "review_deliveries"
    __table_args__ = (Index("ix_review_deliveries_due", "state", "next_attempt_at"),)

    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = _tenant_fk()
    review_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("reviews.id", ondelete="CASCADE"), index=True
    )
    idempotency_key: Mapped[str] = mapped_column(String(100), unique=True)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    state: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    delivered_to: Mapped[str | None] = mapped_column(String(1000))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(String(500))
    log: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list, server_default="[]")


class UsageEntry(Base):
    __tablename__ = "usage_ledger"
    __table_args__ = (Index("ix_usage_ledger_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(32))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    request_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # The application's key when an API key called (``user_id`` is then None).
    api_key_id: Mapped[uuid.UUID | None] = mapped_column()
    # Why the request failed once it had started (``llm.unavailable``), None when it did not.
    error: Mapped[str | None] = mapped_column(String(64))


Index("ix_usage_ledger_created", UsageEntry.created_at)


class AuditEntry(Base):
    """Who did what to whom. ``tenant_id`` is the tenant acted upon (None for platform-wide)."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="SET NULL")
    )
    actor_id: Mapped[uuid.UUID | None] = mapped_column()
    actor_kind: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(100))
    target_type: Mapped[str] = mapped_column(String(50))
    target_id: Mapped[str | None] = mapped_column(String(100))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    request_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Upload(Timestamped, Base):
    """A presigned upload: the client POSTs the file straight to the object store (a POST
    policy), then completes it. Swept by maintenance when it expires uncompleted."""

    __tablename__ = "uploads"

    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = _tenant_fk()
    object_key: Mapped[str] = mapped_column(String(1000))
    filename: Mapped[str] = mapped_column(String(500))
    mime: Mapped[str | None] = mapped_column(String(200))
    title: Mapped[str | None] = mapped_column(String(500))
    source_id: Mapped[str | None] = mapped_column(String(500))
    tags: Mapped[list[str]] = mapped_column(default=list, server_default="{}")
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    document_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("documents.id", ondelete="SET NULL")
    )


class DeadLetter(Base):
    """A task message that exhausted its retries, moved from RabbitMQ's dead-letter queue into
    PostgreSQL so admins can list it and replay it, and nothing is lost if the broker restarts."""

    __tablename__ = "dead_letters"

    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = _tenant_fk()
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )
    message_id: Mapped[str] = mapped_column(String(200), unique=True)
    task: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str | None] = mapped_column(Text)
    body: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    replayed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


# -- token budgets (``haven.budget``) -------------------------------------------------------


class TokenBudgetPeriod(Base):
    """A tenant's tokens in one budget period: settled (``used``) and held by reservations
    of answers still being generated (``reserved``). The limit is ``tenants.token_budget``."""

    __tablename__ = "token_budget_periods"
    __table_args__ = (
        CheckConstraint("used >= 0", name="used"),
        CheckConstraint("reserved >= 0", name="reserved"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    used: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    reserved: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class BudgetReservation(Base):
    """Tokens held for one llm call until it is settled; ``holder`` renews ``expires_at``
    while it lives, and the sweep releases what a dead holder left."""

    __tablename__ = "budget_reservations"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "period_start"],
            ["token_budget_periods.tenant_id", "token_budget_periods.period_start"],
            ondelete="CASCADE",
        ),
        Index("ix_budget_reservations_expires_at", "expires_at"),
        Index("ix_budget_reservations_holder", "holder"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column()
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    tokens: Mapped[int] = mapped_column(BigInteger)
    holder: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    request_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# --- Code runs: submissions run in the sandbox, who may run code, the common-error registry --


class CodeRun(Timestamped, Base):
    """One submission run in the sandbox. ``bundle`` is a zip Haven wrote itself from the
    checked submission (a snippet is one file); ``result`` what the sandbox reported, with
    the explanation of a failure."""

    __tablename__ = "code_runs"
    __table_args__ = (
        Index("ix_code_runs_tenant_subject_created", "tenant_id", "subject_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = _tenant_fk()
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), index=True
    )
    # Who ran it: a user or an API key of the tenant.
    subject_id: Mapped[uuid.UUID] = mapped_column()
    subject_kind: Mapped[str] = mapped_column(String(16))
    language: Mapped[str] = mapped_column(String(32))
    bundle: Mapped[bytes] = mapped_column(LargeBinary)
    stdin: Mapped[bytes] = mapped_column(LargeBinary, default=b"", server_default="")
    args: Mapped[list[str]] = mapped_column(default=list, server_default="{}")
    result: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")


class RunAccess(Timestamped, Base):
    """A user or API key a tenant admin allowed to run code, with a daily run quota
    (None: the installation's default)."""

    __tablename__ = "run_access"
    __table_args__ = (UniqueConstraint("tenant_id", "subject_kind", "subject_id"),)

    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = _tenant_fk()
    subject_kind: Mapped[str] = mapped_column(String(16))
    subject_id: Mapped[uuid.UUID] = mapped_column()
    daily_quota: Mapped[int | None] = mapped_column(Integer)
    created_by: Mapped[uuid.UUID | None] = mapped_column()


class ErrorPattern(Timestamped, Base):
    """A common error and how to explain it. ``tenant_id`` None: a shared default, read by
    every tenant; a tenant's own entries are matched before the defaults. A run's error
    matches when its type equals ``error_type`` (None: any failure), its message matches
    ``message_regex`` and the submitted code matches ``code_regex`` (each None: anything)."""

    __tablename__ = "error_patterns"
    __table_args__ = (Index("ix_error_patterns_language_type", "language", "error_type"),)

    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    language: Mapped[str] = mapped_column(String(32))
    error_type: Mapped[str | None] = mapped_column(String(200))
    message_regex: Mapped[str | None] = mapped_column(String(500))
    code_regex: Mapped[str | None] = mapped_column(String(500))
    title: Mapped[str] = mapped_column(String(200))
    explanation: Mapped[str] = mapped_column(Text)
    hint: Mapped[str] = mapped_column(Text, default="", server_default="")
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")


class ErrorPatternHit(Base):
    """How often an entry explained a tenant's runs (a shared default counts per tenant)."""

    __tablename__ = "error_pattern_hits"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    pattern_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("error_patterns.id", ondelete="CASCADE"), primary_key=True
    )
    hits: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    last_hit_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


# --- operator controls ---------------------------------------------------------------------


class PlatformFlag(Base):
    """A platform-wide switch an operator sets (``read_only``), read by every API replica and
    worker (each keeps it a couple of seconds, ``HAVEN_READ_ONLY_CACHE_SECONDS``)."""

    __tablename__ = "platform_flags"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now(), nullable=False
    )


# The queue caps count a tenant's queued jobs of one kind on every new job: this keeps that a
# small index range scan however many jobs have ended.
Index(
    "ix_jobs_queued_kind_tenant",
    Job.kind,
    Job.tenant_id,
    postgresql_where=Job.state == JobState.QUEUED,
)


# --- analyses (map-reduce over whole documents) ----------------------------------------------


class AnalysisKind(enum.StrEnum):
    SUMMARY = "summary"
    EXTRACT = "extract"
    CUSTOM = "custom"


class Analysis(Timestamped, Base):
    """A map-reduce analysis of whole documents (``workers.analyze``). Its job carries the
    state; this row carries the request, the source versions it read, where it is (``phase``)
    and, once ready, the result and the artifact's object keys. ``request_key`` identifies the
    request and the exact source versions: the same request again returns this row."""

    __tablename__ = "analyses"
    __table_args__ = (Index("ix_analyses_tenant_request", "tenant_id", "request_key"),)

    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = _tenant_fk()
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), index=True
    )
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    kind: Mapped[AnalysisKind] = mapped_column(_enum(AnalysisKind))
    instructions: Mapped[str | None] = mapped_column(Text)
    output_schema: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # [{document_id, version, version_id, content_sha256, title, mime, object_key}]
    sources: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list, server_default="[]")
    document_ids: Mapped[list[uuid.UUID]] = mapped_column(
        ARRAY(Uuid), default=list, server_default="{}"
    )
    request_key: Mapped[str] = mapped_column(String(64))
    force: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    # extract | map | reduce | done: with the job's progress, "map 37/120".
    phase: Mapped[str | None] = mapped_column(String(16))
    result: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    model: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    artifact_key: Mapped[str | None] = mapped_column(String(1000))
    artifact_json_key: Mapped[str | None] = mapped_column(String(1000))
    llm_calls: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class AnalysisStep(Base):
    """One stored map or reduce result, keyed on what determines it: the document version
    and its content hash, the step, the parameters' hash and the model's identity (``key``,
    a sha256 of them). A killed job redoes only the steps without a row; a repeated request
    makes no llm call. A map step's row goes with its document."""

    __tablename__ = "analysis_steps"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = _tenant_fk()
    document_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("documents.id", ondelete="CASCADE"), index=True
    )
    step: Mapped[str] = mapped_column(String(16))
    output: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    llm_calls: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class BrowserSession(Base):
    """A browser's sign-in (``POST /api/v1/auth/session``): the web app holds only an httpOnly
    cookie with a random secret, of which only the sha256 is stored here, and trades it for
    short access tokens (``/auth/refresh``). In PostgreSQL rather than Redis: a session must
    outlive an API restart and a Redis flush, its revocation must be certain, and it goes
    with its user (ON DELETE CASCADE). It ends when revoked (sign-out), idle too long, past
    its absolute lifetime, or when the user's ``token_version`` moves on (password change,
    role change)."""

    __tablename__ = "browser_sessions"

    id: Mapped[uuid.UUID] = _uuid_pk()
    tenant_id: Mapped[uuid.UUID] = _tenant_fk()
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True, nullable=False
    )
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The user's token version when the session began.
    token_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    last_used_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


# --- blue/green re-index -----------------------------------------------------------------


class IndexPointer(Base):
    """Which vector collection serves an index, and with which embedding models.

    Search and ingest resolve the live collection here (each process keeps it a couple of
    seconds, ``HAVEN_INDEX_POINTER_CACHE_SECONDS``); a re-index builds ``building_*`` beside
    it and the switch is one update of this row: live becomes previous, building becomes
    live. ``*_models`` map each embedding alias to the model version (``name/version``)
    whose vectors the collection holds; queries are embedded with exactly that version.
    At most one build per index: a build is started by an update that requires
    ``building_collection`` to be empty (see ``haven.index_pointer``)."""

    __tablename__ = "index_pointers"
    __table_args__ = (
        CheckConstraint(
            "building_collection IS NULL OR building_collection <> live_collection",
            name="building_is_not_live",
        ),
    )

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    live_collection: Mapped[str] = mapped_column(String(200))
    live_models: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    # Bumped on every change: a process that cached an older generation reads the row again.
    generation: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    previous_collection: Mapped[str | None] = mapped_column(String(200))
    previous_models: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # The previous collection is dropped by the first re-index check after this time.
    previous_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    building_collection: Mapped[str | None] = mapped_column(String(200))
    building_models: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # building | canceling
    building_state: Mapped[str | None] = mapped_column(String(16))
    building_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    building_done: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    building_total: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The last gate's report (counts, recall), for `haven maintenance re-index --status`.
    last_report: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now(), nullable=False
    )
