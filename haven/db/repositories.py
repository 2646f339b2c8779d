"""All SQL lives here. Repositories receive a session and never commit.

Tenant-owned tables are reached only through ``TenantRepository`` subclasses, which take the
tenant from the authenticated ``Principal`` and add the filter to every query themselves, so a
forgotten filter is impossible rather than unlikely. Another tenant's row is simply not found.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Generic, Literal, TypeVar, cast

from sqlalchemy import (
    Select,
    String,
    Table,
    Update,
    bindparam,
    delete,
    exists,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from haven.auth.principal import Principal
from haven.db.tables import (
    PLATFORM_TENANT_ID,
    Analysis,
    ApiKey,
    AuditEntry,
    Base,
    BrowserSession,
    Chat,
    Chunk,
    DeadLetter,
    Document,
    DocumentState,
    DocumentVersion,
    Job,
    JobKind,
    JobState,
    Message,
    Tenant,
    Upload,
    UsageEntry,
    User,
)
from haven.errors import NotFound

__all__ = ["NotFound"]  # re-exported: callers catch it from here or from haven.errors

ModelT = TypeVar("ModelT", bound=Base)


class TenantRepository(Generic[ModelT]):
    model: ClassVar[type[Any]]
    label: ClassVar[str]

    def __init__(self, session: Session, principal: Principal) -> None:
        self.session = session
        self.principal = principal
        self.tenant_id = principal.tenant_id

    def _select(self) -> Select[ModelT]:
        return select(self.model).where(self.model.tenant_id == self.tenant_id)

    def get(self, object_id: uuid.UUID) -> ModelT | None:
        stmt = self._select().where(self.model.id == object_id)
        return self.session.execute(stmt).scalar_one_or_none()

    def require(self, object_id: uuid.UUID) -> ModelT:
        found = self.get(object_id)
        if found is None:
            raise NotFound(self.label, object_id)
        return found

    def list(self, *, offset: int = 0, limit: int = 50) -> Sequence[ModelT]:
        stmt = self._select().order_by(self.model.created_at.desc()).offset(offset).limit(limit)
        return self.session.execute(stmt).scalars().all()

    def count(self) -> int:
        stmt = (
            select(func.count())
            .select_from(self.model)
            .where(self.model.tenant_id == self.tenant_id)
        )
        return int(self.session.execute(stmt).scalar_one())

    def add(self, obj: ModelT) -> ModelT:
        obj.tenant_id = self.tenant_id  # type: ignore[attr-defined]
        self.session.add(obj)
        self.session.flush()
        return obj

    def delete(self, obj: ModelT) -> None:
        if obj.tenant_id != self.tenant_id:  # type: ignore[attr-defined]
            raise NotFound(self.label, obj.id)  # type: ignore[attr-defined]
        self.session.delete(obj)
        self.session.flush()


class UserRepository(TenantRepository[User]):
    model = User
    label = "user"

    def by_username(self, username: str) -> User | None:
        stmt = self._select().where(User.username == username)
        return self.session.execute(stmt).scalar_one_or_none()


class ApiKeyRepository(TenantRepository[ApiKey]):
    model = ApiKey
    label = "api key"


class AuditRepository(TenantRepository[AuditEntry]):
    model = AuditEntry
    label = "audit entry"

    def list(self, *, offset: int = 0, limit: int = 50) -> Sequence[AuditEntry]:
        stmt = self._select().order_by(AuditEntry.id.desc()).offset(offset).limit(limit)
        return self.session.execute(stmt).scalars().all()


class AuditLog:
    """Writes audit rows. Every admin action calls ``record`` in the same transaction."""

    def __init__(self, session: Session, actor: Principal | None, request_id: str | None) -> None:
        self.session = session
        self.actor = actor
        self.request_id = request_id

    def record(
        self,
        action: str,
        *,
        target_type: str,
        target_id: object | None,
        tenant_id: uuid.UUID | None,
        **details: Any,
    ) -> AuditEntry:
        entry = AuditEntry(
            tenant_id=tenant_id,
            actor_id=self.actor.subject_id if self.actor else None,
            actor_kind=self.actor.kind if self.actor else "cli",
            action=action,
            target_type=target_type,
            target_id=str(target_id) if target_id is not None else None,
            details=details,
            request_id=self.request_id,
        )
        self.session.add(entry)
        self.session.flush()
        return entry


class PlatformRepository:
    """Queries that are not scoped to one tenant: the tenants themselves, and the credential
    look-ups that run before anyone is authenticated (login by unique username, an API key by
    its unique prefix). Nothing here returns tenant-owned content."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def tenants(self) -> Sequence[Tenant]:
        """The customers' tenants (not the platform's own, which only owns maintenance)."""
        stmt = select(Tenant).where(Tenant.id != PLATFORM_TENANT_ID).order_by(Tenant.created_at)
        return self.session.execute(stmt).scalars().all()

    def tenant(self, tenant_id: uuid.UUID) -> Tenant | None:
        if tenant_id == PLATFORM_TENANT_ID:
            return None
        return self.session.get(Tenant, tenant_id)

    def tenant_by_slug(self, slug: str) -> Tenant | None:
        stmt = select(Tenant).where(Tenant.slug == slug)
        return self.session.execute(stmt).scalar_one_or_none()

    def add_tenant(self, tenant: Tenant) -> Tenant:
        self.session.add(tenant)
        self.session.flush()
        return tenant

    def set_tenant_active(self, tenant: Tenant, active: bool) -> None:
        tenant.is_active = active
        self.session.flush()

    def tenant_row_counts(self, tenant_id: uuid.UUID) -> dict[str, int]:
        """Rows of every tenant-owned table that belong to the tenant (what deleting it removes)."""
        counts: dict[str, int] = {}
        for table in Base.metadata.sorted_tables:
            column = table.c.get("tenant_id")
            if column is None or table.name == AuditEntry.__tablename__:
                continue  # the audit log outlives the tenant
            stmt = select(func.count()).select_from(table).where(column == tenant_id)
            counts[table.name] = int(self.session.execute(stmt).scalar_one())
        return counts

    def delete_tenant(self, tenant_id: uuid.UUID) -> None:
        """Every tenant-owned row goes with it (the foreign keys cascade); its audit rows stay,
        detached from it."""
        self.session.execute(delete(Tenant).where(Tenant.id == tenant_id))
        self.session.expire_all()

    def add_user(self, user: User) -> User:
        self.session.add(user)
        self.session.flush()
        return user

    def user_for_login(self, username: str) -> User | None:
        if "\x00" in username:  # no username holds one, and PostgreSQL refuses to compare it
            return None
        stmt = select(User).where(User.username == username)
        return self.session.execute(stmt).scalar_one_or_none()

    def user_by_id(self, user_id: uuid.UUID) -> User | None:
        return self.session.get(User, user_id)

    def user_for_update(self, user_id: uuid.UUID) -> User | None:
        stmt = select(User).where(User.id == user_id).with_for_update()
        return self.session.execute(stmt).scalar_one_or_none()

    def username_taken(self, username: str) -> bool:
        return self.user_for_login(username) is not None

    def api_key_for_exchange(self, prefix: str) -> ApiKey | None:
        stmt = select(ApiKey).where(ApiKey.prefix == prefix)
        return self.session.execute(stmt).scalar_one_or_none()

    def api_key_by_id(self, key_id: uuid.UUID) -> ApiKey | None:
        return self.session.get(ApiKey, key_id)

    def touch_api_key(self, key: ApiKey) -> None:
        key.last_used_at = datetime.now(UTC)
        self.session.flush()


# The statements a worker runs for every document, built once and executed with parameters:
# composing and caching a statement per call cost more CPU than PostgreSQL spends running it.
# Each one filters on the ``tenant`` parameter, which the repositories always pass.
_versions_of_document = select(DocumentVersion).where(
    DocumentVersion.tenant_id == bindparam("tenant"),
    DocumentVersion.document_id == bindparam("document"),
)
_NEWEST_VERSION = select(
    select(func.max(_versions_of_document.subquery().c.version)).scalar_subquery()
).where(exists(_versions_of_document.where(DocumentVersion.id == bindparam("version_row"))))
_MARK_READY = (
    update(DocumentVersion)
    .where(
        DocumentVersion.tenant_id == bindparam("tenant"),
        DocumentVersion.id == bindparam("version_row"),
    )
    .values(state=DocumentState.READY)
    .execution_options(synchronize_session=False)
)
_MARK_READY_CURRENT = (
    update(Document)
    .where(Document.tenant_id == bindparam("tenant"), Document.id == bindparam("document"))
    .values(
        state=DocumentState.READY,
        current_version=bindparam("number"),
        lang=func.coalesce(bindparam("lang", type_=String), Document.lang),
    )
    .add_cte(_MARK_READY.returning(DocumentVersion.id).cte("ready_version"))
    .execution_options(synchronize_session=False)
)
# On the table, not the mapped class: a Core executemany skips the ORM's bulk-insert
# bookkeeping (0.2 of 0.4 ms of client CPU for a document's rows).
_INSERT_CHUNKS = pg_insert(cast(Table, Chunk.__table__)).on_conflict_do_nothing(
    index_elements=["id"]
)
_DELETE_OTHER_VERSIONS = (
    delete(Chunk)
    .where(
        Chunk.tenant_id == bindparam("tenant"),
        Chunk.document_id == bindparam("document"),
        Chunk.version_id != bindparam("keep"),
    )
    .returning(Chunk.id)
)


class DocumentRepository(TenantRepository[Document]):
    model = Document
    label = "document"

    def list_filtered(
        self, *, state: DocumentState | None, tag: str | None, offset: int, limit: int
    ) -> tuple[Sequence[Document], int]:
        stmt = self._select()
        if state is not None:
            stmt = stmt.where(Document.state == state)
        if tag is not None:
            stmt = stmt.where(Document.tags.contains([tag]))
        total = self.session.execute(select(func.count()).select_from(stmt.subquery())).scalar_one()
        rows = (
            self.session.execute(
                stmt.order_by(Document.created_at.desc(), Document.id).offset(offset).limit(limit)
            )
            .scalars()
            .all()
        )
        return rows, int(total)

    def by_source_id(self, source_id: str) -> Document | None:
        stmt = self._select().where(Document.source_id == source_id).with_for_update()
        return self.session.execute(stmt).scalar_one_or_none()

    def by_content(self, sha256: str) -> Document | None:
        """The document that already holds these exact bytes in this tenant, if any."""
        stmt = (
            self._select()
            .join(DocumentVersion, DocumentVersion.document_id == Document.id)
            .where(DocumentVersion.tenant_id == self.tenant_id)
            .where(DocumentVersion.content_sha256 == sha256)
            .limit(1)
        )
        return self.session.execute(stmt).scalar_one_or_none()

    def versions(self, document_id: uuid.UUID) -> Sequence[DocumentVersion]:
        stmt = (
            select(DocumentVersion)
            .where(
                DocumentVersion.tenant_id == self.tenant_id,
                DocumentVersion.document_id == document_id,
            )
            .order_by(DocumentVersion.version)
        )
        return self.session.execute(stmt).scalars().all()

    def newest_version_number(self, document_id: uuid.UUID, version_id: uuid.UUID) -> int | None:
        """The document's newest version number; None when that version of it is gone
        (deleted while it was ingested)."""
        params = {"tenant": self.tenant_id, "document": document_id, "version_row": version_id}
        return self.session.execute(_NEWEST_VERSION, params).scalar_one_or_none()

    def mark_ready(
        self,
        document_id: uuid.UUID,
        version_id: uuid.UUID,
        number: int,
        *,
        current: bool,
        lang: str | None = None,
    ) -> None:
        """The version is ready; with ``current`` it is also the one the document serves and
        ``lang`` (if given) the document's main language (both rows in one statement)."""
        params = {"tenant": self.tenant_id, "document": document_id, "version_row": version_id}
        if current:
            self.session.execute(_MARK_READY_CURRENT, {**params, "number": number, "lang": lang})
        else:
            self.session.execute(_MARK_READY, params)

    def add_version(self, document: Document, version: DocumentVersion) -> DocumentVersion:
        version.tenant_id = self.tenant_id
        version.document_id = document.id
        self.session.add(version)
        self.session.flush()
        return version

    def chunk_count(self, document_id: uuid.UUID) -> int:
        stmt = select(func.count()).where(
            Chunk.tenant_id == self.tenant_id, Chunk.document_id == document_id
        )
        return int(self.session.execute(stmt).scalar_one())


class ChunkRepository(TenantRepository[Chunk]):
    model = Chunk
    label = "chunk"

    def insert_many(self, rows: list[dict[str, Any]]) -> None:
        """Idempotent: a re-run of the step inserts nothing twice."""
        if not rows:
            return
        for row in rows:
            row["tenant_id"] = self.tenant_id
        self.session.execute(_INSERT_CHUNKS, rows)

    def delete_version(self, version_id: uuid.UUID) -> None:
        self.session.execute(
            delete(Chunk).where(Chunk.tenant_id == self.tenant_id, Chunk.version_id == version_id)
        )

    def delete_other_versions(self, document_id: uuid.UUID, keep: uuid.UUID) -> list[uuid.UUID]:
        """Remove the chunk rows of the document's other versions; return their ids."""
        params = {"tenant": self.tenant_id, "document": document_id, "keep": keep}
        return list(self.session.execute(_DELETE_OTHER_VERSIONS, params).scalars().all())

    def count_version(self, version_id: uuid.UUID) -> int:
        stmt = select(func.count()).where(
            Chunk.tenant_id == self.tenant_id, Chunk.version_id == version_id
        )
        return int(self.session.execute(stmt).scalar_one())

    def list(self, *, offset: int = 0, limit: int = 50) -> Sequence[Chunk]:
        stmt = self._select().order_by(Chunk.position).offset(offset).limit(limit)
        return self.session.execute(stmt).scalars().all()


class JobRepository(TenantRepository[Job]):
    model = Job
    label = "job"

    def list_filtered(
        self, *, state: JobState | None, kind: JobKind | None, offset: int, limit: int
    ) -> Sequence[Job]:
        stmt = self._select()
        if state is not None:
            stmt = stmt.where(Job.state == state)
        if kind is not None:
            stmt = stmt.where(Job.kind == kind)
        stmt = stmt.order_by(Job.created_at.desc(), Job.id).offset(offset).limit(limit)
        return self.session.execute(stmt).scalars().all()

    def for_subject(self, subject_id: uuid.UUID) -> Sequence[Job]:
        stmt = self._select().where(Job.subject_id == subject_id).order_by(Job.created_at)
        return self.session.execute(stmt).scalars().all()

    def by_idempotency_key(self, key: str) -> Job | None:
        stmt = self._select().where(Job.idempotency_key == key)
        return self.session.execute(stmt).scalar_one_or_none()

    def request_cancel(self, job: Job) -> bool:
        """A queued job is canceled at once (it will never start); a running one is flagged
        and stops at its next step boundary. False when the job had already ended."""
        now = datetime.now(UTC)
        queued = self.session.execute(
            update(Job)
            .where(Job.id == job.id, Job.tenant_id == self.tenant_id, Job.state == JobState.QUEUED)
            .values(state=JobState.CANCELED, cancel_requested=True, finished_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        running = self.session.execute(
            update(Job)
            .where(Job.id == job.id, Job.tenant_id == self.tenant_id, Job.state == JobState.RUNNING)
            .values(cancel_requested=True, updated_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        self.session.refresh(job)
        return bool(queued or running)

    def requeue(self, job: Job) -> bool:
        """failed | canceled → queued, with a fresh budget of attempts; ``retries`` counts
        the manual retries granted (the caller audits the attempts spent before it)."""
        now = datetime.now(UTC)
        moved = self.session.execute(
            update(Job)
            .where(
                Job.id == job.id,
                Job.tenant_id == self.tenant_id,
                Job.state.in_([JobState.FAILED, JobState.CANCELED]),
            )
            .values(
                state=JobState.QUEUED,
                attempts=0,
                retries=Job.retries + 1,
                cancel_requested=False,
                progress_done=0,
                finished_at=None,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        self.session.refresh(job)
        return bool(moved)

    def add_system_job(
        self, kind: JobKind, *, idempotency_key: str, params: dict[str, Any], max_attempts: int
    ) -> Job:
        """A job no upload created (a probe, maintenance), queued for the workers."""
        return self.add(
            Job(
                kind=kind,
                state=JobState.QUEUED,
                idempotency_key=idempotency_key,
                params=params,
                max_attempts=max_attempts,
            )
        )


# --- Jobs as the workers' runner moves them ------------------------------------------------
#
# Each transition is one conditional UPDATE (``... WHERE state = <expected>``), so two workers,
# a redelivered message and the reaper can race without ever moving a job twice. A run's own
# writes (heartbeat, finish, fail, retry) also name its attempt: a run whose job was taken from
# it (a step over its deadline, the reaper) changes nothing. The statements run for every job
# are built once and executed with parameters.


def _job_now() -> datetime:
    return datetime.now(UTC)


def claim_statement(*, takeover: bool, steps: int | None = None) -> Update:
    """The claim's UPDATE, without its RETURNING, for the parameters ``job_id`` and ``now``:
    queued (or, with ``takeover``, running: its worker died) → running, one more attempt.

    A job whose attempts are spent is not claimed (``JobStore.over_cap`` finds it): a
    document that kills its worker every time ends instead of being redelivered forever.
    A worker may make this the first part of a larger statement (see
    ``workers.ingest.pipeline``)."""
    states = [JobState.QUEUED, JobState.RUNNING] if takeover else [JobState.QUEUED]
    now = bindparam("now", type_=Job.heartbeat_at.type)
    progress = {} if steps is None else {"progress_done": 0, "progress_total": steps}
    return (
        update(Job)
        .where(
            Job.id == bindparam("job_id"),
            Job.state.in_(states),
            Job.cancel_requested.is_(False),
            Job.attempts < Job.max_attempts,
        )
        .values(
            state=JobState.RUNNING,
            attempts=Job.attempts + 1,
            started_at=func.coalesce(Job.started_at, now),
            heartbeat_at=now,
            last_error=None,
            last_error_message=None,
            updated_at=now,
            **progress,
        )
    )


def job_params(job_id: uuid.UUID, attempt: int | None = None) -> dict[str, Any]:
    """The parameters of the prebuilt job statements (the claim, the finish)."""
    params: dict[str, Any] = {"job_id": job_id, "now": _job_now()}
    if attempt is not None:
        params["attempt"] = attempt
    return params


# running → ready for the attempt that holds the job, unless a cancel was requested.
_FINISH = (
    update(Job)
    .where(
        Job.id == bindparam("job_id"),
        Job.state == JobState.RUNNING,
        Job.attempts == bindparam("attempt"),
        Job.cancel_requested.is_(False),
    )
    .values(
        state=JobState.READY,
        finished_at=bindparam("now", type_=Job.finished_at.type),
        progress_done=Job.progress_total,
        updated_at=func.now(),
    )
    .returning(Job.id)
    .execution_options(synchronize_session=False)
)

# A message for people is short and never an exception's text.
MESSAGE_LIMIT = 500


class JobStore:
    """Job transitions for workers and the reaper. Workers act for the job's tenant, which
    they read from the job row itself; nothing here returns tenant content."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, job_id: uuid.UUID) -> Job | None:
        return self.session.get(Job, job_id, populate_existing=True)

    def _move(
        self,
        job_id: uuid.UUID,
        expected: Sequence[JobState],
        attempt: int | None,
        **values: Any,
    ) -> bool:
        stmt = update(Job).where(Job.id == job_id, Job.state.in_(list(expected)))
        if attempt is not None:
            stmt = stmt.where(Job.attempts == attempt)
        stmt = stmt.values(updated_at=func.now(), **values).execution_options(
            synchronize_session=False
        )
        return bool(self.session.execute(stmt).rowcount)  # type: ignore[attr-defined]

    def claim(self, job_id: uuid.UUID, *, takeover: bool, steps: int | None = None) -> Job | None:
        """queued → running (or, with ``takeover``, keep a running job whose worker died).
        Returns the job when this caller now owns it. ``steps`` starts its progress."""
        stmt = claim_statement(takeover=takeover, steps=steps).returning(Job)
        return self.session.execute(
            stmt, job_params(job_id), execution_options={"populate_existing": True}
        ).scalar_one_or_none()

    def over_cap(self, job_id: uuid.UUID) -> Job | None:
        """The job, when it is waiting or running but has no attempt left (the claim refused
        it): the last attempt's worker died, or its step ran over its deadline."""
        stmt = select(Job).where(
            Job.id == job_id,
            Job.state.in_([JobState.QUEUED, JobState.RUNNING]),
            Job.cancel_requested.is_(False),
            Job.attempts >= Job.max_attempts,
        )
        return self.session.execute(
            stmt, execution_options={"populate_existing": True}
        ).scalar_one_or_none()

    def beat(
        self,
        job_id: uuid.UUID,
        attempt: int,
        *,
        done: int | None = None,
        total: int | None = None,
    ) -> Literal["running", "cancel", "lost"]:
        """Heartbeat and progress of a running attempt, and whether it should go on, in one
        statement: ``cancel`` when a cancel was requested, ``lost`` when the job is no longer
        this attempt's (taken over, requeued, failed or canceled)."""
        values: dict[str, Any] = {"heartbeat_at": _job_now(), "updated_at": func.now()}
        if done is not None:
            values["progress_done"] = done
        if total is not None:
            values["progress_total"] = total
        stmt = (
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.RUNNING, Job.attempts == attempt)
            .values(**values)
            .returning(Job.cancel_requested)
            .execution_options(synchronize_session=False)
        )
        cancel = self.session.execute(stmt).scalar_one_or_none()
        if cancel is None:
            return "lost"
        return "cancel" if cancel else "running"

    def cancel_requested(self, job_id: uuid.UUID) -> bool:
        stmt = select(Job.cancel_requested).where(Job.id == job_id)
        return bool(self.session.execute(stmt).scalar_one_or_none())

    def finish_unless_canceled(
        self, job_id: uuid.UUID, attempt: int
    ) -> Literal["ready", "cancel", "lost"]:
        """running → ready, unless a cancel was requested (``cancel``) or the job is no longer
        this attempt's (``lost``). In the caller's transaction: it commits with the job's
        results, or the results are not written at all."""
        finished = self.session.execute(_FINISH, job_params(job_id, attempt))
        if finished.scalar_one_or_none() is not None:
            return "ready"
        job = self.get(job_id)
        if job is not None and job.state == JobState.RUNNING and job.attempts == attempt:
            return "cancel"
        return "lost"

    def fail(
        self, job_id: uuid.UUID, code: str, message: str, *, attempt: int | None = None
    ) -> bool:
        """→ failed with a reason. With ``attempt``, only while that attempt holds the job."""
        return self._move(
            job_id,
            [JobState.RUNNING, JobState.QUEUED],
            attempt,
            state=JobState.FAILED,
            last_error=code,
            last_error_message=message[:MESSAGE_LIMIT],
            finished_at=_job_now(),
        )

    def mark_canceled(self, job_id: uuid.UUID, *, attempt: int | None = None) -> bool:
        return self._move(
            job_id,
            [JobState.RUNNING, JobState.QUEUED],
            attempt,
            state=JobState.CANCELED,
            finished_at=_job_now(),
        )

    def back_to_queue(
        self, job_id: uuid.UUID, code: str, message: str, *, attempt: int | None = None
    ) -> bool:
        """running → queued after a transient error (its next delivery is the caller's to
        send). With ``attempt``, only while that attempt holds the job."""
        return self._move(
            job_id,
            [JobState.RUNNING],
            attempt,
            state=JobState.QUEUED,
            last_error=code,
            last_error_message=message[:MESSAGE_LIMIT],
        )

    def unclaim(self, job_id: uuid.UUID, *, attempt: int) -> bool:
        """running → queued, giving back the attempt the claim counted: the run deferred its
        job before doing anything lasting (``workers.jobs.heartbeat.JobDeferred``). Only
        while that attempt holds the job."""
        return self._move(
            job_id,
            [JobState.RUNNING],
            attempt,
            state=JobState.QUEUED,
            attempts=Job.attempts - 1,
            progress_done=0,
        )

    def _stale(
        self, state: JobState, since: Any, older_than: timedelta, limit: int
    ) -> Sequence[Job]:
        stmt = (
            select(Job)
            .where(Job.state == state, since < _job_now() - older_than)
            .order_by(since)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return self.session.execute(stmt).scalars().all()

    def stale_running(self, older_than: timedelta, limit: int = 100) -> Sequence[Job]:
        """Running jobs whose lease nobody renewed (their worker died)."""
        return self._stale(JobState.RUNNING, Job.heartbeat_at, older_than, limit)

    def count_stale_running(self, older_than: timedelta) -> int:
        stmt = select(func.count()).where(
            Job.state == JobState.RUNNING, Job.heartbeat_at < _job_now() - older_than
        )
        return int(self.session.execute(stmt).scalar_one())

    def stale_queued(self, older_than: timedelta, limit: int = 100) -> Sequence[Job]:
        """Queued jobs nobody picked up (their message was lost); safe to send again."""
        return self._stale(JobState.QUEUED, Job.updated_at, older_than, limit)

    def touch(self, job_id: uuid.UUID) -> None:
        self.session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(updated_at=_job_now())
            .execution_options(synchronize_session=False)
        )

    def add_dead_letter(
        self,
        job: Job,
        *,
        message_id: str,
        task: str,
        queue: str,
        reason: str,
        body: dict[str, Any],
    ) -> None:
        """Keyed on the broker message's id: a message moved twice is listed once."""
        self.session.execute(
            pg_insert(DeadLetter)
            .values(
                tenant_id=job.tenant_id,
                job_id=job.id,
                message_id=message_id,
                task=task,
                queue=queue,
                reason=reason,
                body=body,
            )
            .on_conflict_do_nothing(index_elements=["message_id"])
        )


class UploadRepository(TenantRepository[Upload]):
    model = Upload
    label = "upload"

    def open_uploads(self, now: datetime) -> tuple[int, datetime | None]:
        """How many of the tenant's uploads are open (neither completed nor expired), and
        when the first of them expires. Holds the tenant's upload lock until the transaction
        ends, so two requests cannot both take the last free place."""
        self.session.execute(
            select(
                func.pg_advisory_xact_lock(func.hashtextextended(f"uploads:{self.tenant_id}", 0))
            )
        )
        stmt = select(func.count(), func.min(Upload.expires_at)).where(
            Upload.tenant_id == self.tenant_id,
            Upload.completed_at.is_(None),
            Upload.expires_at > now,
        )
        count, soonest = self.session.execute(stmt).one()
        return int(count), soonest

    def require_for_update(self, upload_id: uuid.UUID) -> Upload:
        stmt = self._select().where(Upload.id == upload_id).with_for_update()
        found = self.session.execute(stmt).scalar_one_or_none()
        if found is None:
            raise NotFound(self.label, upload_id)
        return found


class AbandonedUploads:
    """Uploads of every tenant that expired without being completed: maintenance's sweep,
    which runs for the platform rather than for one tenant."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def expired_before(self, cutoff: datetime, *, limit: int) -> Sequence[Upload]:
        stmt = (
            select(Upload)
            .where(Upload.completed_at.is_(None), Upload.expires_at < cutoff)
            .order_by(Upload.expires_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return self.session.execute(stmt).scalars().all()

    def delete(self, upload: Upload) -> None:
        self.session.delete(upload)
        self.session.flush()


class DeadLetterRepository(TenantRepository[DeadLetter]):
    model = DeadLetter
    label = "dead letter"


class ChatRepository(TenantRepository[Chat]):
    """A chat is its owner's: a user sees the chats they started, and applications (API keys)
    share the tenant's chats that no user owns. Anyone else's chat is not found."""

    model = Chat
    label = "chat"

    @property
    def _owner(self) -> uuid.UUID | None:
        return self.principal.subject_id if self.principal.kind == "user" else None

    def _select(self) -> Select[Chat]:
        stmt = super()._select()
        owner = self._owner
        return stmt.where(Chat.user_id == owner if owner else Chat.user_id.is_(None))

    def add(self, obj: Chat) -> Chat:
        obj.user_id = self._owner
        return super().add(obj)

    def list_page(self, *, offset: int, limit: int) -> tuple[Sequence[Chat], int]:
        stmt = self._select()
        total = self.session.execute(select(func.count()).select_from(stmt.subquery())).scalar_one()
        rows = (
            self.session.execute(
                stmt.order_by(Chat.updated_at.desc(), Chat.id).offset(offset).limit(limit)
            )
            .scalars()
            .all()
        )
        return rows, int(total)

    def touch(self, chat: Chat) -> None:
        chat.updated_at = datetime.now(UTC)
        self.session.flush()


class MessageRepository(TenantRepository[Message]):
    model = Message
    label = "message"

    def of_chat(self, chat_id: uuid.UUID, *, offset: int = 0, limit: int = 200) -> list[Message]:
        stmt = (
            self._select()
            .where(Message.chat_id == chat_id)
            .order_by(Message.created_at, Message.id)
            .offset(offset)
            .limit(limit)
        )
        return list(self.session.execute(stmt).scalars().all())

    def latest(self, chat_id: uuid.UUID, limit: int) -> list[Message]:
        """The last ``limit`` messages of a chat, oldest first."""
        stmt = (
            self._select()
            .where(Message.chat_id == chat_id)
            .order_by(Message.created_at.desc(), Message.id.desc())
            .limit(limit)
        )
        return list(reversed(self.session.execute(stmt).scalars().all()))

    def count_of_chat(self, chat_id: uuid.UUID) -> int:
        stmt = select(func.count()).where(
            Message.tenant_id == self.tenant_id, Message.chat_id == chat_id
        )
        return int(self.session.execute(stmt).scalar_one())


class UsageRepository(TenantRepository[UsageEntry]):
    model = UsageEntry
    label = "usage entry"

    def record(
        self,
        kind: str,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        latency_ms: int | None,
        request_id: str | None,
    ) -> UsageEntry:
        user_id = self.principal.subject_id if self.principal.kind == "user" else None
        return self.add(
            UsageEntry(
                user_id=user_id,
                kind=kind,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                latency_ms=latency_ms,
                request_id=request_id,
            )
        )


# --- analyses (api/analyses, workers/analyze) -------------------------------------------------


class AnalysisRepository(TenantRepository[Analysis]):
    model = Analysis
    label = "analysis"

    def reusable(self, request_key: str) -> Analysis | None:
        """The newest analysis of the same request over the same source versions that has
        not failed or been canceled: asked again, it is returned instead of a new one."""
        stmt = (
            self._select()
            .join(Job, Job.id == Analysis.job_id)
            .where(
                Analysis.request_key == request_key,
                Job.tenant_id == self.tenant_id,
                Job.state.in_([JobState.QUEUED, JobState.RUNNING, JobState.READY]),
            )
            .order_by(Analysis.created_at.desc())
            .limit(1)
        )
        return self.session.execute(stmt).scalar_one_or_none()

    def page(self, *, offset: int, limit: int) -> tuple[Sequence[Analysis], int]:
        stmt = self._select()
        total = self.session.execute(select(func.count()).select_from(stmt.subquery())).scalar_one()
        rows = (
            self.session.execute(
                stmt.order_by(Analysis.created_at.desc(), Analysis.id).offset(offset).limit(limit)
            )
            .scalars()
            .all()
        )
        return rows, int(total)

    def jobs(self, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Job]:
        if not job_ids:
            return {}
        stmt = select(Job).where(Job.tenant_id == self.tenant_id, Job.id.in_(list(job_ids)))
        return {job.id: job for job in self.session.execute(stmt).scalars().all()}

    def current_versions(self, document_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int | None]:
        """The version each still existing document serves (a deleted one is absent)."""
        if not document_ids:
            return {}
        stmt = select(Document.id, Document.current_version).where(
            Document.tenant_id == self.tenant_id, Document.id.in_(list(document_ids))
        )
        return {row.id: row.current_version for row in self.session.execute(stmt)}

    def documents_by_source_ids(self, source_ids: Sequence[str]) -> dict[str, Document]:
        if not source_ids:
            return {}
        stmt = select(Document).where(
            Document.tenant_id == self.tenant_id, Document.source_id.in_(list(source_ids))
        )
        found = self.session.execute(stmt).scalars().all()
        return {d.source_id: d for d in found if d.source_id is not None}

    def version(self, document_id: uuid.UUID, number: int) -> DocumentVersion | None:
        stmt = select(DocumentVersion).where(
            DocumentVersion.tenant_id == self.tenant_id,
            DocumentVersion.document_id == document_id,
            DocumentVersion.version == number,
        )
        return self.session.execute(stmt).scalar_one_or_none()

    def chunk_tokens(self, version_ids: Sequence[uuid.UUID]) -> int:
        """The versions' tokens as ingest counted them (its chunks, overlaps included): an
        estimate, made before any model is asked."""
        if not version_ids:
            return 0
        stmt = select(func.coalesce(func.sum(Chunk.token_count), 0)).where(
            Chunk.tenant_id == self.tenant_id, Chunk.version_id.in_(list(version_ids))
        )
        return int(self.session.execute(stmt).scalar_one())


class BrowserSessionRepository:
    """Browser sessions, found by their secret's hash before anyone is authenticated (like
    ``PlatformRepository``'s credential look-ups); nothing here returns tenant content."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, browser_session: BrowserSession) -> BrowserSession:
        self.session.add(browser_session)
        self.session.flush()
        return browser_session

    def delete_ended(self, user_id: uuid.UUID, now: datetime, idle_minutes: int) -> int:
        """Delete a user's sessions that can no longer be used (revoked, past their
        lifetime, idle too long); returns how many."""
        stmt = delete(BrowserSession).where(
            BrowserSession.user_id == user_id,
            (BrowserSession.revoked_at.is_not(None))
            | (BrowserSession.expires_at <= now)
            | (BrowserSession.last_used_at <= now - timedelta(minutes=idle_minutes)),
        )
        return int(self.session.execute(stmt).rowcount)  # type: ignore[attr-defined]

    def by_secret_hash(self, secret_hash: str) -> BrowserSession | None:
        """Locked for the rest of the transaction: a refresh and a sign-out of the same
        session do not interleave."""
        stmt = (
            select(BrowserSession)
            .where(BrowserSession.secret_hash == secret_hash)
            .with_for_update()
        )
        return self.session.execute(stmt).scalar_one_or_none()


class MaintenanceJobs:
    """The platform's maintenance jobs (owned by the platform's own tenant, ``tenant_id``):
    the run of a task still queued or running, each task's latest runs, and a run's report.
    Maintenance is platform-wide, so only platform administrators and the workers reach
    this."""

    def __init__(self, session: Session, tenant_id: uuid.UUID) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def _select(self) -> Select[Job]:
        return select(Job).where(Job.tenant_id == self.tenant_id, Job.kind == JobKind.MAINTENANCE)

    def ensure_tenant(self, slug: str, name: str) -> None:
        """The platform's tenant exists (the migration creates it; a restored or hand-made
        database may lack it). Inactive: nobody signs in to it."""
        self.session.execute(
            pg_insert(Tenant)
            .values(id=self.tenant_id, slug=slug, name=name, is_active=False)
            .on_conflict_do_nothing()
        )

    def lock_task(self, task: str) -> None:
        """Until the transaction ends, no other request for ``task`` can look or add."""
        self.session.execute(
            select(func.pg_advisory_xact_lock(func.hashtextextended(f"maintenance:{task}", 0)))
        )

    def unfinished(self, task: str) -> Job | None:
        stmt = (
            self._select()
            .where(
                Job.params["task"].astext == task,
                Job.state.in_([JobState.QUEUED, JobState.RUNNING]),
            )
            .order_by(Job.created_at)
            .limit(1)
        )
        return self.session.execute(stmt).scalar_one_or_none()

    def add(self, task: str, *, params: dict[str, Any], max_attempts: int) -> Job:
        job = Job(
            tenant_id=self.tenant_id,
            kind=JobKind.MAINTENANCE,
            state=JobState.QUEUED,
            idempotency_key=f"maintenance:{task}:{uuid.uuid4()}",
            params={**params, "task": task},
            max_attempts=max_attempts,
        )
        self.session.add(job)
        self.session.flush()
        return job

    def get(self, job_id: uuid.UUID) -> Job | None:
        return self.session.execute(self._select().where(Job.id == job_id)).scalar_one_or_none()

    def latest(self, task: str, *, state: JobState | None = None) -> Job | None:
        stmt = self._select().where(Job.params["task"].astext == task)
        if state is not None:
            stmt = stmt.where(Job.state == state)
        stmt = stmt.order_by(Job.created_at.desc()).limit(1)
        return self.session.execute(stmt).scalar_one_or_none()

    def last_success_times(self) -> dict[str, datetime]:
        """When each task last finished a run successfully."""
        task = Job.params["task"].astext
        stmt = (
            select(task, func.max(Job.finished_at))
            .where(
                Job.tenant_id == self.tenant_id,
                Job.kind == JobKind.MAINTENANCE,
                Job.state == JobState.READY,
            )
            .group_by(task)
        )
        return {str(name): at for name, at in self.session.execute(stmt).all() if at is not None}

    def set_result(self, job_id: uuid.UUID, attempt: int, result: dict[str, Any]) -> None:
        """The run's report, written by the attempt that holds the job."""
        self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.attempts == attempt)
            .values(result=result)
            .execution_options(synchronize_session=False)
        )

    def request_cancel(self, job_id: uuid.UUID) -> bool:
        """A queued run is canceled at once; a running one is flagged and stops at its next
        progress report (``TaskContext.check_cancel``). False when it had already ended."""
        now = datetime.now(UTC)
        mine = (Job.id == job_id, Job.tenant_id == self.tenant_id, Job.kind == JobKind.MAINTENANCE)
        queued = self.session.execute(
            update(Job)
            .where(*mine, Job.state == JobState.QUEUED)
            .values(state=JobState.CANCELED, cancel_requested=True, finished_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        running = self.session.execute(
            update(Job)
            .where(*mine, Job.state == JobState.RUNNING)
            .values(cancel_requested=True, updated_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        return bool(queued or running)
