"""Sign-in: a username and password, or an application's API key, for a short-lived token."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.security import OAuth2PasswordRequestForm

from api.auth.schemas import ApiKeyExchange, MeRead, TokenRead
from api.deps import CurrentPrincipal, RuntimeDep, SessionDep, principal_for_api_key
from haven.auth.passwords import verify_password
from haven.auth.principal import Principal
from haven.db.repositories import PlatformRepository

router = APIRouter(prefix="/api/v1", tags=["auth"])

_BAD_LOGIN = "incorrect username or password"


@router.post("/auth/token", response_model=TokenRead)
def issue_token(
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    session: SessionDep,
    runtime: RuntimeDep,
) -> TokenRead:
    platform = PlatformRepository(session)
    user = platform.user_for_login(form.username)
    if not verify_password(user.password_hash if user else None, form.password) or user is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, _BAD_LOGIN)
    tenant = platform.tenant(user.tenant_id)
    if not user.is_active or tenant is None or not tenant.is_active:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "account is disabled")
    principal = Principal(subject_id=user.id, tenant_id=user.tenant_id, role=user.role)
    ttl = timedelta(minutes=runtime.settings.access_token_minutes)
    token, expires = runtime.tokens.issue(principal, ttl)
    return TokenRead(access_token=token, expires_at=expires)


@router.post("/auth/api-key", response_model=TokenRead)
def exchange_api_key(body: ApiKeyExchange, session: SessionDep, runtime: RuntimeDep) -> TokenRead:
    principal = principal_for_api_key(session, body.api_key)
    ttl = timedelta(minutes=runtime.settings.api_key_token_minutes)
    token, expires = runtime.tokens.issue(principal, ttl)
    return TokenRead(access_token=token, expires_at=expires)


@router.get("/me", response_model=MeRead)
def me(principal: CurrentPrincipal, session: SessionDep) -> MeRead:
    platform = PlatformRepository(session)
    tenant = platform.tenant(principal.tenant_id)
    if tenant is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "tenant no longer exists")
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
