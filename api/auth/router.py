"""Sign-in: a username and password, or an application's API key, for a short-lived token;
and a user's own password change."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Cookie, Depends, Header, Request, Response, status
from fastapi.security import OAuth2PasswordRequestForm

from api.auth import service, sessions
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


async def _signed_in(
    form: OAuth2PasswordRequestForm, request: Request, runtime: ApiRuntime
) -> service.Account:
    """The account whose password the form proves. Throttled per username and per client
    address (429 with Retry-After). The password check (argon2) runs after the account's row
    is read and its session released, so a flood of guesses never holds the database slots
    everyone else needs."""
    address = _client_address(request)
    await runtime.signin.admit(form.username, address)
    account = await runtime.in_db_thread(service.account_for_login, runtime, form.username)
    hashed = account.password_hash if account else None
    if not await runtime.check_password(hashed, form.password) or account is None:
        raise Unauthenticated(_BAD_LOGIN, code="signin.failed")
    await runtime.signin.succeeded(form.username, address)
    if not account.can_sign_in:
        raise Unauthenticated("account is disabled", code="account.disabled")
    return account


@router.post("/auth/token", response_model=TokenRead)
async def issue_token(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], request: Request, runtime: RuntimeDep
) -> TokenRead:
    """Throttled per username and per client address (429 with Retry-After)."""
    account = await _signed_in(form, request, runtime)
    return _token(runtime, account.principal, runtime.settings.access_token_minutes)


def require_csrf_header(
    x_haven_csrf: Annotated[str | None, Header(alias=sessions.CSRF_HEADER)] = None,
) -> None:
    """The cookie routes answer only requests that carry ``X-Haven-CSRF: 1``, which a
    cross-site form or link cannot send (see ``api.auth.sessions``)."""
    if x_haven_csrf != "1":
        raise Forbidden(
            f"this request needs the {sessions.CSRF_HEADER}: 1 header", code="csrf.header_missing"
        )


CsrfChecked = Depends(require_csrf_header)
SessionCookie = Annotated[str | None, Cookie(alias=sessions.COOKIE)]


def _clear_cookie(response: Response, runtime: ApiRuntime) -> None:
    response.delete_cookie(
        sessions.COOKIE,
        path=sessions.COOKIE_PATH,
        secure=runtime.settings.session_cookie_is_secure,
        httponly=True,
        samesite="strict",
    )


@router.post("/auth/session", response_model=TokenRead, dependencies=[CsrfChecked])
async def start_session(
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    request: Request,
    response: Response,
    runtime: RuntimeDep,
    rid: RequestIdDep,
) -> TokenRead:
    """Sign in from a browser: the same form, throttling and checks as ``/auth/token``, and
    besides the short access token an httpOnly cookie (``SameSite=Strict``, path
    ``/api/v1/auth``) that ``/auth/refresh`` trades for new tokens until the session ends
    (sign-out, idle or absolute expiry, a password or role change, the account disabled)."""
    account = await _signed_in(form, request, runtime)
    secret = sessions.new_secret()
    await runtime.in_db_thread(sessions.start, runtime, account, secret, rid)
    settings = runtime.settings
    response.set_cookie(
        sessions.COOKIE,
        secret,
        max_age=settings.session_max_hours * 3600,
        path=sessions.COOKIE_PATH,
        secure=settings.session_cookie_is_secure,
        httponly=True,
        samesite="strict",
    )
    return _token(runtime, account.principal, settings.access_token_minutes)


@router.post(
    "/auth/refresh",
    response_model=TokenRead,
    dependencies=[CsrfChecked],
    responses={401: {"description": "no live session: sign in again"}},
)
async def refresh_session(runtime: RuntimeDep, cookie: SessionCookie = None) -> TokenRead:
    """A new access token for the browser session of the cookie (a reload stays signed in).
    401 when there is none, it has ended or expired, or its user was disabled, deleted or
    changed their password."""
    if not cookie:
        raise Unauthenticated("not signed in", code="session.missing")
    principal = await runtime.in_db_thread(sessions.refresh, runtime, cookie)
    return _token(runtime, principal, runtime.settings.access_token_minutes)


@router.post("/auth/logout", status_code=status.HTTP_204_NO_CONTENT, dependencies=[CsrfChecked])
async def end_session(
    runtime: RuntimeDep, rid: RequestIdDep, cookie: SessionCookie = None
) -> Response:
    """Sign out: the cookie's session is revoked and the cookie cleared. Signing out without
    a session, or twice, is fine (204)."""
    if cookie:
        await runtime.in_db_thread(sessions.end, runtime, cookie, rid)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    _clear_cookie(response, runtime)
    return response


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
    ends; the answer is a fresh token for this one (and a browser session whose cookie came
    with the request goes on)."""
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
    # A browser's cookie comes along (its path covers this route): that session goes on.
    cookie = request.cookies.get(sessions.COOKIE)
    if cookie:
        await runtime.in_db_thread(
            sessions.keep_after_password_change,
            runtime,
            cookie,
            updated.subject_id,
            updated.version,
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
