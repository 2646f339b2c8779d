"""Typed request dependencies: the session that owns the transaction, the caller, roles."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated

import structlog
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.outbox import JobOutbox
from api.runtime import ApiRuntime
from haven.auth import api_keys
from haven.auth.principal import Principal
from haven.auth.tokens import TokenError
from haven.db.engine import transaction
from haven.db.repositories import PlatformRepository
from haven.db.tables import Role


def get_runtime(request: Request) -> ApiRuntime:
    runtime: ApiRuntime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[ApiRuntime, Depends(get_runtime)]


async def get_session(request: Request, runtime: RuntimeDep) -> AsyncIterator[Session]:
    """One transaction per request: committed when the endpoint returns, before the response
    is sent (scope="function"), rolled back when it raises. Jobs the request created are
    sent to the broker only after the commit, so a worker never looks for a row that does
    not exist yet. The session is held under one of the runtime's database slots."""
    outbox = JobOutbox()
    request.state.outbox = outbox
    async with runtime.db_slots:
        session = runtime.session_factory()
        try:
            yield session
        except BaseException:
            await run_in_threadpool(_end, session, commit=False)
            raise
        await run_in_threadpool(_end, session, commit=True)
    if outbox:
        await run_in_threadpool(outbox.flush, runtime)


def _end(session: Session, *, commit: bool) -> None:
    """Commit (or roll back) and close in one hop to a worker thread."""
    try:
        if commit:
            session.commit()
        else:
            session.rollback()
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def get_outbox(request: Request, _: SessionDep) -> JobOutbox:
    outbox: JobOutbox = request.state.outbox
    return outbox


OutboxDep = Annotated[JobOutbox, Depends(get_outbox)]

_bearer = HTTPBearer(auto_error=False)


def principal_for_api_key(session: Session, plaintext: str) -> Principal:
    """The application an API key stands for; 401 with the reason when it cannot be used."""
    platform = PlatformRepository(session)
    prefix = api_keys.parse_prefix(plaintext)
    key = platform.api_key_for_exchange(prefix) if prefix else None
    if key is None or not api_keys.matches(plaintext, key.key_hash):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown API key")
    now = datetime.now(UTC)
    if key.revoked_at is not None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "API key has been revoked")
    if key.expires_at is not None and key.expires_at <= now:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "API key has expired")
    tenant = platform.tenant(key.tenant_id)
    if tenant is None or not tenant.is_active:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "tenant is disabled")
    # Recorded at most once a minute: an application may call many times a second.
    if key.last_used_at is None or now - key.last_used_at > timedelta(minutes=1):
        platform.touch_api_key(key)
    return Principal(subject_id=key.id, tenant_id=key.tenant_id, role=key.role, kind="api_key")


def _api_key_principal(runtime: ApiRuntime, credentials: HTTPAuthorizationCredentials) -> Principal:
    with transaction(runtime.session_factory) as session:
        return principal_for_api_key(session, credentials.credentials)


async def get_principal(
    request: Request,
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """A bearer token (a user's or an application's) or, for OpenAI-style clients that send
    the key itself, an API key."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if api_keys.parse_prefix(credentials.credentials) is not None:
        try:
            principal = await runtime.in_db_thread(_api_key_principal, runtime, credentials)
        except HTTPException as exc:
            exc.headers = {"WWW-Authenticate": "Bearer"}
            raise
    else:
        try:
            principal = runtime.tokens.verify(credentials.credentials)
        except TokenError as exc:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, str(exc), headers={"WWW-Authenticate": "Bearer"}
            ) from exc
    request.state.tenant_id = str(principal.tenant_id)
    structlog.contextvars.bind_contextvars(tenant_id=str(principal.tenant_id))
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def require_role(role: Role) -> Callable[[Principal], Principal]:
    def check(principal: CurrentPrincipal) -> Principal:
        if not principal.has_role(role):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this action needs the {role} role")
        return principal

    return check


EditorPrincipal = Annotated[Principal, Depends(require_role(Role.EDITOR))]
TenantAdminPrincipal = Annotated[Principal, Depends(require_role(Role.TENANT_ADMIN))]
PlatformAdminPrincipal = Annotated[Principal, Depends(require_role(Role.ADMIN))]


def get_request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


RequestIdDep = Annotated[str | None, Depends(get_request_id)]
