"""Code runs (``/api/v1/runs``) and their administration: who may run code
(``/api/v1/admin/run-access``) and the common-error registry (``/api/v1/admin/error-patterns``)."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response, status

from api.deps import (
    CurrentPrincipal,
    OutboxDep,
    RequestIdDep,
    RuntimeDep,
    SessionDep,
    TenantAdminPrincipal,
)
from api.pagination import Page, pagination
from api.runs import service
from api.runs.schemas import (
    ErrorPatternCreate,
    ErrorPatternRead,
    ErrorPatternUpdate,
    LanguageName,
    RunAccessRead,
    RunAccessUpsert,
    RunCreate,
    RunRead,
)
from haven.db.runs import ErrorPatternRepository, RunAccessRepository

router = APIRouter(prefix="/api/v1", tags=["runs"])


@router.post("/runs", response_model=RunRead, status_code=status.HTTP_202_ACCEPTED)
def create_run(
    body: RunCreate,
    session: SessionDep,
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    outbox: OutboxDep,
    rid: RequestIdDep,
) -> RunRead:
    settings = runtime.settings
    run, _ = service.submit(
        session,
        principal,
        body,
        outbox,
        rid,
        sandbox=settings.sandbox,
        default_quota=settings.runs_daily_quota,
        max_attempts=settings.job_max_attempts,
    )
    return service.read(session, principal, run.id)


@router.get("/runs/{run_id}", response_model=RunRead)
def get_run(run_id: uuid.UUID, session: SessionDep, principal: CurrentPrincipal) -> RunRead:
    return service.read(session, principal, run_id)


@router.get("/admin/run-access", response_model=list[RunAccessRead])
def list_run_access(
    session: SessionDep,
    principal: TenantAdminPrincipal,
    page: Annotated[Page, pagination(default_limit=100, max_limit=500)],
) -> list[RunAccessRead]:
    rows = RunAccessRepository(session, principal).list(offset=page.offset, limit=page.limit)
    return [RunAccessRead.model_validate(r) for r in rows]


@router.put("/admin/run-access", response_model=RunAccessRead)
def allow_runs(
    body: RunAccessUpsert, session: SessionDep, principal: TenantAdminPrincipal, rid: RequestIdDep
) -> RunAccessRead:
    return RunAccessRead.model_validate(service.allow(session, principal, body, rid))


@router.delete(
    "/admin/run-access/{subject_kind}/{subject_id}", status_code=status.HTTP_204_NO_CONTENT
)
def revoke_runs(
    subject_kind: Literal["user", "api_key"],
    subject_id: uuid.UUID,
    session: SessionDep,
    principal: TenantAdminPrincipal,
    rid: RequestIdDep,
) -> Response:
    service.revoke(session, principal, subject_kind, subject_id, rid)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/admin/error-patterns", response_model=list[ErrorPatternRead])
def list_error_patterns(
    session: SessionDep,
    principal: TenantAdminPrincipal,
    page: Annotated[Page, pagination(default_limit=100, max_limit=500)],
    language: Annotated[LanguageName | None, Query()] = None,
) -> list[ErrorPatternRead]:
    rows = ErrorPatternRepository(session, principal).list_for(
        language, offset=page.offset, limit=page.limit
    )
    return [service.pattern_read(entry, hits) for entry, hits in rows]


@router.get("/admin/error-patterns/{pattern_id}", response_model=ErrorPatternRead)
def get_error_pattern(
    pattern_id: uuid.UUID, session: SessionDep, principal: TenantAdminPrincipal
) -> ErrorPatternRead:
    patterns = ErrorPatternRepository(session, principal)
    return service.pattern_read(patterns.require(pattern_id), patterns.hits_of(pattern_id))


@router.post(
    "/admin/error-patterns", response_model=ErrorPatternRead, status_code=status.HTTP_201_CREATED
)
def create_error_pattern(
    body: ErrorPatternCreate,
    session: SessionDep,
    principal: TenantAdminPrincipal,
    runtime: RuntimeDep,
    rid: RequestIdDep,
) -> ErrorPatternRead:
    entry = service.create_pattern(session, principal, body, rid, runtime.settings.sandbox)
    return service.pattern_read(entry, 0)


@router.patch("/admin/error-patterns/{pattern_id}", response_model=ErrorPatternRead)
def update_error_pattern(
    pattern_id: uuid.UUID,
    body: ErrorPatternUpdate,
    session: SessionDep,
    principal: TenantAdminPrincipal,
    rid: RequestIdDep,
) -> ErrorPatternRead:
    entry = service.update_pattern(session, principal, pattern_id, body, rid)
    return service.pattern_read(entry, ErrorPatternRepository(session, principal).hits_of(entry.id))


@router.delete("/admin/error-patterns/{pattern_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_error_pattern(
    pattern_id: uuid.UUID, session: SessionDep, principal: TenantAdminPrincipal, rid: RequestIdDep
) -> Response:
    service.delete_pattern(session, principal, pattern_id, rid)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
