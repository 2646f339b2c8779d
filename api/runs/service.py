"""Code runs as callers use them: submit (allow-list and quota first), read; and what tenant
admins manage: who may run code with what quota, and the tenant's common-error entries.
Every admin change is audited in the same transaction.

Who may run code: a tenant admin (or platform admin) always; anyone else only when a tenant
admin put them (a user or an API key) on the tenant's allow-list, within their daily quota.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Any

import regex
from sqlalchemy.orm import Session

from api.outbox import JobOutbox
from api.runs.schemas import (
    ErrorPatternCreate,
    ErrorPatternRead,
    ErrorPatternUpdate,
    RunAccessUpsert,
    RunCreate,
    RunRead,
)
from haven.auth.principal import Principal
from haven.db.repositories import AuditLog, JobRepository, PlatformRepository
from haven.db.runs import CodeRunRepository, ErrorPatternRepository, RunAccessRepository, day_ago
from haven.db.tables import CodeRun, ErrorPattern, Job, JobKind, JobState, Role, RunAccess
from haven.errors import Forbidden, Invalid, LimitExceeded, NotFound, TooLarge
from haven.queueing import task_for
from haven.sandbox import SandboxSettings
from haven.sandbox.bundle import BadBundle, pack, read_zip


def _may_run_without_entry(principal: Principal) -> bool:
    return principal.kind == "user" and principal.has_role(Role.TENANT_ADMIN)


def check_access(
    session: Session, principal: Principal, default_quota: int
) -> tuple[int, RunAccess | None]:
    """The caller's daily quota; ``Forbidden`` with the reason when they may not run code,
    ``LimitExceeded`` when today's runs are spent."""
    access = RunAccessRepository(session, principal)
    entry = access.of(principal.kind, principal.subject_id)
    if entry is None and not _may_run_without_entry(principal):
        raise Forbidden(
            "running code is limited to the people and applications a tenant admin allowed; "
            "ask a tenant admin to add you",
            code="runs.not_allowed",
        )
    quota = (
        entry.daily_quota if entry is not None and entry.daily_quota is not None else default_quota
    )
    access.lock_subject(principal.kind, principal.subject_id)
    runs = CodeRunRepository(session, principal)
    since = day_ago()
    used = runs.count_since(principal.kind, principal.subject_id, since)
    if used >= quota:
        oldest = runs.oldest_since(principal.kind, principal.subject_id, since)
        retry_after = max(1.0, (oldest - since).total_seconds()) if oldest is not None else 86400.0
        raise LimitExceeded(
            f"the daily quota of {quota} runs is used up",
            retry_after=retry_after,
            code="runs.quota",
        )
    return quota, entry


def _files(body: RunCreate, sandbox: SandboxSettings) -> dict[str, bytes]:
    language = sandbox.languages.get(body.language)
    if language is None:
        raise Invalid(
            f"unknown language {body.language!r}; this installation runs "
            + ", ".join(sorted(sandbox.languages)),
            code="runs.language",
        )
    if (body.code is None) == (body.files_zip is None):
        raise Invalid("send either code or files_zip", code="runs.source")
    if body.code is not None:
        code = body.code.encode()
        if len(code) > sandbox.max_total_bytes:
            raise TooLarge("the code is too large", limit=sandbox.max_total_bytes)
        return {language.file_name: code}
    try:
        data = base64.b64decode(body.files_zip or "", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Invalid("files_zip is not valid base64", code="runs.zip") from exc
    try:
        files = read_zip(data, max_files=sandbox.max_files, max_total_bytes=sandbox.max_total_bytes)
    except BadBundle as exc:
        raise Invalid(str(exc), code="runs.zip") from exc
    if language.file_name not in files:
        raise Invalid(
            f"the project needs a {language.file_name} at its top level (what is run)",
            code="runs.entry_point",
        )
    return files


def submit(
    session: Session,
    principal: Principal,
    body: RunCreate,
    outbox: JobOutbox,
    request_id: str | None,
    *,
    sandbox: SandboxSettings,
    default_quota: int,
    max_attempts: int,
) -> tuple[CodeRun, Job]:
    # Who may run code first: nobody else's archive is even opened.
    check_access(session, principal, default_quota)
    files = _files(body, sandbox)
    for arg in body.args:
        if any(ord(c) < 32 and c not in "\t" for c in arg):
            raise Invalid("arguments may not hold control characters", code="runs.args")
    run = CodeRunRepository(session, principal).add(
        CodeRun(
            subject_id=principal.subject_id,
            subject_kind=principal.kind,
            language=body.language,
            bundle=pack(files),
            stdin=body.stdin.encode(),
            args=list(body.args),
        )
    )
    job = JobRepository(session, principal).add(
        Job(
            kind=JobKind.RUN,
            state=JobState.QUEUED,
            subject_id=run.id,
            idempotency_key=f"run:{run.id}",
            params={"request_id": request_id} if request_id else {},
            max_attempts=max_attempts,
        )
    )
    run.job_id = job.id
    session.flush()
    outbox.add(task_for(JobKind.RUN), job.id)
    return run, job


def read(session: Session, principal: Principal, run_id: uuid.UUID) -> RunRead:
    """A run of the caller's own; a tenant admin reads every run of the tenant."""
    run = CodeRunRepository(session, principal).require(run_id)
    own = run.subject_kind == principal.kind and run.subject_id == principal.subject_id
    if not own and not principal.has_role(Role.TENANT_ADMIN):
        raise NotFound("run", run_id)
    job = JobRepository(session, principal).get(run.job_id) if run.job_id else None
    result: dict[str, Any] = dict(run.result or {})
    result.pop("language", None)
    return RunRead(
        id=run.id,
        job_id=run.job_id,
        state=job.state if job else None,
        language=run.language,
        created_at=run.created_at,
        error=job.last_error if job and job.state is JobState.FAILED else None,
        error_message=job.last_error_message if job and job.state is JobState.FAILED else None,
        **result,
    )


# --- who may run code ---------------------------------------------------------------------


def _check_subject(
    session: Session, principal: Principal, kind: str, subject_id: uuid.UUID
) -> None:
    platform = PlatformRepository(session)
    found = (
        platform.user_by_id(subject_id) if kind == "user" else platform.api_key_by_id(subject_id)
    )
    if found is None or found.tenant_id != principal.tenant_id:
        raise NotFound(kind.replace("_", " "), subject_id)


def allow(
    session: Session, principal: Principal, body: RunAccessUpsert, request_id: str | None
) -> RunAccess:
    _check_subject(session, principal, body.subject_kind, body.subject_id)
    access = RunAccessRepository(session, principal)
    entry = access.of(body.subject_kind, body.subject_id)
    before = None if entry is None else entry.daily_quota
    if entry is None:
        entry = access.add(
            RunAccess(
                subject_kind=body.subject_kind,
                subject_id=body.subject_id,
                daily_quota=body.daily_quota,
                created_by=principal.subject_id,
            )
        )
    else:
        entry.daily_quota = body.daily_quota
        session.flush()
    AuditLog(session, principal, request_id).record(
        "runs.access.allow",
        target_type=body.subject_kind,
        target_id=body.subject_id,
        tenant_id=principal.tenant_id,
        daily_quota=body.daily_quota,
        previous_quota=before,
    )
    return entry


def revoke(
    session: Session, principal: Principal, kind: str, subject_id: uuid.UUID, request_id: str | None
) -> None:
    access = RunAccessRepository(session, principal)
    entry = access.of(kind, subject_id)
    if entry is None:
        raise NotFound("run access entry", subject_id)
    access.delete(entry)
    AuditLog(session, principal, request_id).record(
        "runs.access.revoke", target_type=kind, target_id=subject_id, tenant_id=principal.tenant_id
    )


# --- the common-error registry -----------------------------------------------------------------


def _check_regexes(values: dict[str, Any]) -> None:
    for name in ("message_regex", "code_regex"):
        pattern = values.get(name)
        if pattern is None:
            continue
        try:
            regex.compile(pattern)
        except (regex.error, ValueError) as exc:
            raise Invalid(
                f"{name} is not a valid regular expression: {exc}", code="runs.regex"
            ) from exc


def pattern_read(entry: ErrorPattern, hits: int) -> ErrorPatternRead:
    return ErrorPatternRead.model_validate(
        {
            **{c: getattr(entry, c) for c in ErrorPatternRead.model_fields if hasattr(entry, c)},
            "shared": entry.tenant_id is None,
            "hits": hits,
        }
    )


def create_pattern(
    session: Session,
    principal: Principal,
    body: ErrorPatternCreate,
    request_id: str | None,
    sandbox: SandboxSettings,
) -> ErrorPattern:
    if body.language not in sandbox.languages:
        raise Invalid(f"unknown language {body.language!r}", code="runs.language")
    values = body.model_dump()
    _check_regexes(values)
    entry = ErrorPatternRepository(session, principal).add(ErrorPattern(**values))
    AuditLog(session, principal, request_id).record(
        "runs.error_pattern.create",
        target_type="error_pattern",
        target_id=entry.id,
        tenant_id=principal.tenant_id,
        title=entry.title,
        error_type=entry.error_type,
    )
    return entry


def update_pattern(
    session: Session,
    principal: Principal,
    pattern_id: uuid.UUID,
    body: ErrorPatternUpdate,
    request_id: str | None,
) -> ErrorPattern:
    entry = ErrorPatternRepository(session, principal).require_own(pattern_id)
    changes = body.model_dump(exclude_unset=True)
    for required in ("title", "explanation", "priority", "enabled", "hint"):
        if required in changes and changes[required] is None:
            raise Invalid(f"{required} cannot be null", code="runs.pattern")
    _check_regexes(changes)
    for key, value in changes.items():
        setattr(entry, key, value)
    session.flush()
    AuditLog(session, principal, request_id).record(
        "runs.error_pattern.update",
        target_type="error_pattern",
        target_id=entry.id,
        tenant_id=principal.tenant_id,
        changed=sorted(changes),
    )
    return entry


def delete_pattern(
    session: Session, principal: Principal, pattern_id: uuid.UUID, request_id: str | None
) -> None:
    patterns = ErrorPatternRepository(session, principal)
    entry = patterns.require_own(pattern_id)
    title = entry.title
    session.delete(entry)
    session.flush()
    AuditLog(session, principal, request_id).record(
        "runs.error_pattern.delete",
        target_type="error_pattern",
        target_id=pattern_id,
        tenant_id=principal.tenant_id,
        title=title,
    )
