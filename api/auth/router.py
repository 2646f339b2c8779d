"""Sign-in: a username and password, or an application's API key, for a short-lived token."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.security import OAuth2PasswordRequestForm

from api.auth.schemas import ApiKeyExchange, MeRead, TokenRead
from api.deps import CurrentPrincipal, RuntimeDep, SessionDep
from haven.auth import api_keys
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
    platform = PlatformRepository(session)
    prefix = api_keys.parse_prefix(body.api_key)
    key = platform.api_key_for_exchange(prefix) if prefix else None
    if key is None or not api_keys.matches(body.api_key, key.key_hash):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown API key")
    now = datetime.now(UTC)
    if key.revoked_at is not None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "API key has been revoked")
    if key.expires_at is not None and key.expires_at <= now:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "API key has expired")
    tenant = platform.tenant(key.tenant_id)
    if tenant is None or not tenant.is_active:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "tenant is disabled")
    platform.touch_api_key(key)
    principal = Principal(subject_id=key.id, tenant_id=key.tenant_id, role=key.role, kind="api_key")
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
