"""SQL of code runs: the runs themselves, who may run code, and the common-error registry.

Like every repository here, they receive a session and never commit, and the tenant filter
is theirs to add: the API's come from the caller's ``Principal``, the worker's from the job's
tenant.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from haven.db.repositories import TenantRepository
from haven.db.tables import CodeRun, ErrorPattern, ErrorPatternHit, RunAccess
from haven.errors import NotFound


class CodeRunRepository(TenantRepository[CodeRun]):
    model = CodeRun
    label = "run"

    def count_since(self, subject_kind: str, subject_id: uuid.UUID, since: datetime) -> int:
        stmt = (
            select(func.count())
            .select_from(CodeRun)
            .where(
                CodeRun.tenant_id == self.tenant_id,
                CodeRun.subject_kind == subject_kind,
                CodeRun.subject_id == subject_id,
                CodeRun.created_at >= since,
            )
        )
        return int(self.session.execute(stmt).scalar_one())

    def oldest_since(
        self, subject_kind: str, subject_id: uuid.UUID, since: datetime
    ) -> datetime | None:
        stmt = select(func.min(CodeRun.created_at)).where(
            CodeRun.tenant_id == self.tenant_id,
            CodeRun.subject_kind == subject_kind,
            CodeRun.subject_id == subject_id,
            CodeRun.created_at >= since,
        )
        return self.session.execute(stmt).scalar_one_or_none()


class RunAccessRepository(TenantRepository[RunAccess]):
    model = RunAccess
    label = "run access entry"

    def of(self, subject_kind: str, subject_id: uuid.UUID) -> RunAccess | None:
        stmt = self._select().where(
            RunAccess.subject_kind == subject_kind, RunAccess.subject_id == subject_id
        )
        return self.session.execute(stmt).scalar_one_or_none()

    def lock_subject(self, subject_kind: str, subject_id: uuid.UUID) -> None:
        """Serialises one subject's run submissions (the quota check and the insert), for the
        rest of the transaction."""
        key = f"runs:{self.tenant_id}:{subject_kind}:{subject_id}"
        self.session.execute(select(func.pg_advisory_xact_lock(func.hashtext(key))))


class ErrorPatternRepository(TenantRepository[ErrorPattern]):
    """The tenant's own entries and the shared defaults (``tenant_id`` None), read together;
    only the tenant's own can be changed through it."""

    model = ErrorPattern
    label = "error pattern"

    def _select(self) -> Select[ErrorPattern]:
        return select(ErrorPattern).where(
            or_(ErrorPattern.tenant_id == self.tenant_id, ErrorPattern.tenant_id.is_(None))
        )

    def require_own(self, pattern_id: uuid.UUID) -> ErrorPattern:
        """An entry of this tenant's; a shared default or another tenant's is not found."""
        found = self.get(pattern_id)
        if found is None or found.tenant_id != self.tenant_id:
            raise NotFound(self.label, pattern_id)
        return found

    def list_for(
        self, language: str | None, *, offset: int, limit: int
    ) -> Sequence[tuple[ErrorPattern, int]]:
        """Entries with this tenant's hit count, its own first."""
        stmt = (
            select(ErrorPattern, func.coalesce(ErrorPatternHit.hits, 0))
            .outerjoin(
                ErrorPatternHit,
                (ErrorPatternHit.pattern_id == ErrorPattern.id)
                & (ErrorPatternHit.tenant_id == self.tenant_id),
            )
            .where(or_(ErrorPattern.tenant_id == self.tenant_id, ErrorPattern.tenant_id.is_(None)))
        )
        if language is not None:
            stmt = stmt.where(ErrorPattern.language == language)
        stmt = stmt.order_by(
            ErrorPattern.tenant_id.is_(None), ErrorPattern.priority.desc(), ErrorPattern.id
        )
        rows = self.session.execute(stmt.offset(offset).limit(limit)).all()
        return [(row[0], int(row[1])) for row in rows]

    def hits_of(self, pattern_id: uuid.UUID) -> int:
        stmt = select(ErrorPatternHit.hits).where(
            ErrorPatternHit.tenant_id == self.tenant_id, ErrorPatternHit.pattern_id == pattern_id
        )
        return int(self.session.execute(stmt).scalar_one_or_none() or 0)


class ErrorRegistry:
    """The worker's view of the registry for one tenant: candidates to match, and hits."""

    def __init__(self, session: Session, tenant_id: uuid.UUID) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def candidates(self, language: str, error_type: str | None) -> Sequence[ErrorPattern]:
        """Enabled entries that could match, in matching order: the tenant's own before the
        shared defaults, then by priority, entries for the exact type before catch-alls."""
        types: list[ColumnElement[bool]] = [ErrorPattern.error_type.is_(None)]
        if error_type is not None:
            types.append(ErrorPattern.error_type == error_type)
        stmt = (
            select(ErrorPattern)
            .where(
                or_(ErrorPattern.tenant_id == self.tenant_id, ErrorPattern.tenant_id.is_(None)),
                ErrorPattern.language == language,
                ErrorPattern.enabled.is_(True),
                or_(*types),
            )
            .order_by(
                ErrorPattern.tenant_id.is_(None),
                ErrorPattern.priority.desc(),
                ErrorPattern.error_type.is_(None),
                ErrorPattern.id,
            )
            .limit(200)
        )
        return self.session.execute(stmt).scalars().all()

    def count_hit(self, pattern_id: uuid.UUID) -> None:
        now = datetime.now(UTC)
        stmt = pg_insert(ErrorPatternHit).values(
            tenant_id=self.tenant_id, pattern_id=pattern_id, hits=1, last_hit_at=now
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[ErrorPatternHit.tenant_id, ErrorPatternHit.pattern_id],
            set_={"hits": ErrorPatternHit.hits + 1, "last_hit_at": now},
        )
        self.session.execute(stmt)


def day_ago() -> datetime:
    return datetime.now(UTC) - timedelta(days=1)
