"""Typed request dependencies: the session that owns the transaction, the caller, roles."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

import structlog
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.outbox import JobOutbox
from api.runtime import ApiRuntime
from haven.auth.principal import Principal
from haven.auth.tokens import TokenError
from haven.db.engine import transaction
from haven.db.tables import Role


def get_runtime(request: Request) -> ApiRuntime:
    runtime: ApiRuntime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[ApiRuntime, Depends(get_runtime)]


def get_session(request: Request, runtime: RuntimeDep) -> Iterator[Session]:
    """One transaction per request: committed when the endpoint returns, before the response
    is sent (scope="function"), rolled back when it raises. Jobs the request created are
    sent to the broker only after the commit, so a worker never looks for a row that does
    not exist yet."""
    outbox = JobOutbox()
    request.state.outbox = outbox
    with transaction(runtime.session_factory) as session:
        yield session
    outbox.flush(runtime)


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def get_outbox(request: Request, _: SessionDep) -> JobOutbox:
    outbox: JobOutbox = request.state.outbox
    return outbox


OutboxDep = Annotated[JobOutbox, Depends(get_outbox)]

_bearer = HTTPBearer(auto_error=False)


def get_principal(
    request: Request,
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
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
