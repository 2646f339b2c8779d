"""Typed request dependencies: the session that owns the transaction, the caller, roles."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.outbox import JobOutbox
from api.runtime import ApiRuntime
from haven.auth import api_keys
from haven.auth import state as auth_state
from haven.auth.principal import Principal
from haven.auth.tokens import TokenError
from haven.db.engine import transaction
from haven.db.repositories import PlatformRepository
from haven.db.tables import Role
from haven.errors import Forbidden, Unauthenticated
from haven.ratelimit import RateLimited


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
    """The application an API key stands for; ``Unauthenticated`` with the reason when it
    cannot be used."""
    platform = PlatformRepository(session)
    prefix = api_keys.parse_prefix(plaintext)
    key = platform.api_key_for_exchange(prefix) if prefix else None
    if key is None or not api_keys.matches(plaintext, key.key_hash):
        raise Unauthenticated("unknown API key", code="api_key.unknown")
    now = datetime.now(UTC)
    if key.revoked_at is not None:
        raise Unauthenticated("API key has been revoked", code="api_key.revoked")
    if key.expires_at is not None and key.expires_at <= now:
        raise Unauthenticated("API key has expired", code="api_key.expired")
    tenant = platform.tenant(key.tenant_id)
    if tenant is None or not tenant.is_active:
        raise Unauthenticated("tenant is disabled", code="tenant.disabled")
    # Recorded at most once a minute: an application may call many times a second.
    if key.last_used_at is None or now - key.last_used_at > timedelta(minutes=1):
        platform.touch_api_key(key)
    return Principal(subject_id=key.id, tenant_id=key.tenant_id, role=key.role, kind="api_key")


def _api_key_principal(runtime: ApiRuntime, credentials: HTTPAuthorizationCredentials) -> Principal:
    with transaction(runtime.session_factory) as session:
        return principal_for_api_key(session, credentials.credentials)


def _load_caller_state(
    runtime: ApiRuntime, principal: Principal
) -> tuple[auth_state.CallerState, bool]:
    with transaction(runtime.session_factory) as session:
        return auth_state.load(session, principal)


async def check_current_state(runtime: ApiRuntime, principal: Principal) -> None:
    """Refuse a validly signed token whose user or key has since been disabled, deleted,
    demoted, had their password changed or been revoked, or whose tenant is disabled
    (see ``haven.auth.state``)."""
    found = await runtime.auth.cached(principal)
    if found is None:
        found = await runtime.in_auth_thread(_load_caller_state, runtime, principal)
        await runtime.auth.remember(principal, *found)
    refused = auth_state.refusal(principal, *found)
    if refused is not None:
        raise Unauthenticated(refused.message, code=refused.code)


async def get_principal(
    request: Request,
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """A bearer token (a user's or an application's) or, for OpenAI-style clients that send
    the key itself, an API key. Either way checked against the caller's current state."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthenticated("missing bearer token", code="token.missing")
    if api_keys.parse_prefix(credentials.credentials) is not None:
        # Read from PostgreSQL on every request: its current state is checked there.
        principal = await runtime.in_auth_thread(_api_key_principal, runtime, credentials)
    else:
        try:
            principal = runtime.tokens.verify(credentials.credentials)
        except TokenError as exc:
            raise Unauthenticated(str(exc), code="token.invalid") from exc
        await check_current_state(runtime, principal)
    request.state.tenant_id = str(principal.tenant_id)
    request.state.principal = principal
    structlog.contextvars.bind_contextvars(tenant_id=str(principal.tenant_id))
    # Every authenticated request counts against the tenant's and the caller's rate.
    limits = await runtime.quotas.limits(principal.tenant_id, runtime.in_auth_thread)
    request.state.limits = limits
    try:
        request.state.rate_decision = await runtime.quotas.check_rate(principal, limits)
    except RateLimited as refused:  # the refusal carries the RateLimit-* headers too
        request.state.rate_decision = refused.decision
        raise
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def require_role(role: Role) -> Callable[[Principal], Principal]:
    def check(principal: CurrentPrincipal) -> Principal:
        if not principal.has_role(role):
            raise Forbidden(f"this action needs the {role} role", code="role.required")
        return principal

    return check


EditorPrincipal = Annotated[Principal, Depends(require_role(Role.EDITOR))]
TenantAdminPrincipal = Annotated[Principal, Depends(require_role(Role.TENANT_ADMIN))]
PlatformAdminPrincipal = Annotated[Principal, Depends(require_role(Role.ADMIN))]


def get_request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


RequestIdDep = Annotated[str | None, Depends(get_request_id)]
