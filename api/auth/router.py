"""Sign-in: a username and password, or an application's API key, for a short-lived token;
and a user's own password change."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.security import OAuth2PasswordRequestForm

from api.auth import service
from api.auth.schemas import ApiKeyExchange, MeRead, PasswordChange, TokenRead
from api.deps import CurrentPrincipal, RequestIdDep, RuntimeDep, SessionDep, principal_for_api_key
from api.runtime import ApiRuntime
from haven.auth.principal import Principal
from haven.db.repositories import PlatformRepository
from haven.errors import Forbidden, Unauthenticated

router = APIRouter(prefix="/api/v1", tags=["auth"])

_BAD_LOGIN = "incorrect username or password"


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _token(runtime: ApiRuntime, principal: Principal, minutes: int) -> TokenRead:
    token, expires = runtime.tokens.issue(principal, timedelta(minutes=minutes))
    return TokenRead(access_token=token, expires_at=expires)


@router.post("/auth/token", response_model=TokenRead)
async def issue_token(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], request: Request, runtime: RuntimeDep
) -> TokenRead:
    """Throttled per username and per client address (429 with Retry-After). The password
    check (argon2) runs after the account's row is read and its session released, so a flood
    of guesses never holds the database slots everyone else needs."""
    address = _client_address(request)
    await runtime.signin.admit(form.username, address)
    account = await runtime.in_db_thread(service.account_for_login, runtime, form.username)
    hashed = account.password_hash if account else None
    if not await runtime.check_password(hashed, form.password) or account is None:
        raise Unauthenticated(_BAD_LOGIN, code="signin.failed")
    await runtime.signin.succeeded(form.username, address)
    if not account.can_sign_in:
        raise Unauthenticated("account is disabled", code="account.disabled")
    return _token(runtime, account.principal, runtime.settings.access_token_minutes)


@router.post("/auth/api-key", response_model=TokenRead)
def exchange_api_key(body: ApiKeyExchange, session: SessionDep, runtime: RuntimeDep) -> TokenRead:
    principal = principal_for_api_key(session, body.api_key)
    return _token(runtime, principal, runtime.settings.api_key_token_minutes)


@router.post("/auth/password", response_model=TokenRead)
async def change_password(
    body: PasswordChange,
    principal: CurrentPrincipal,
    request: Request,
    runtime: RuntimeDep,
    rid: RequestIdDep,
) -> TokenRead:
    """Change your own password (the current one is required). Every other session of yours
    ends; the answer is a fresh token for this one."""
    if principal.kind != "user":
        raise Forbidden("an API key has no password", code="password.not_a_user")
    account = await runtime.in_db_thread(service.account_by_id, runtime, principal)
    if account is None:
        raise Unauthenticated("account is disabled or deleted", code="account.disabled")
    # Throttled like a sign-in: a stolen token must not become a way to guess the password.
    address = _client_address(request)
    await runtime.signin.admit(account.username, address)
    if not await runtime.check_password(account.password_hash, body.current_password):
        raise Forbidden("the current password is not right", code="password.wrong")
    await runtime.signin.succeeded(account.username, address)
    new_hash = await runtime.hash_password(body.new_password)
    updated = await runtime.in_db_thread(
        service.set_own_password, runtime, principal, account.token_version, new_hash, rid
    )
    return _token(runtime, updated, runtime.settings.access_token_minutes)


@router.get("/me", response_model=MeRead)
def me(principal: CurrentPrincipal, session: SessionDep) -> MeRead:
    platform = PlatformRepository(session)
    tenant = platform.tenant(principal.tenant_id)
    if tenant is None:
        raise Unauthenticated("tenant no longer exists", code="tenant.disabled")
    username = None
    if principal.kind == "user":
        user = platform.user_by_id(principal.subject_id)
        username = user.username if user else None
    return MeRead(
        subject_id=principal.subject_id,
        kind=principal.kind,
        tenant_id=tenant.id,
        tenant_slug=tenant.slug,
        role=principal.role,
        username=username,
    )
