"""Browser sessions: the web app signs in once and keeps only an httpOnly cookie, which it
trades for short access tokens (kept in memory) whenever it needs one, a reload included.

The cookie holds a random secret; only its sha256 is stored (``BrowserSession``), so a
database read gives nobody a session. A refresh checks the session (not revoked, not idle too
long, within its absolute lifetime) and its user as they are now (active, tenant active, the
same ``token_version``: a password or role change ends every session). Each step is a short
transaction of its own, run in a thread by the router.

Against cross-site requests: the cookie is ``SameSite=Strict`` and scoped to
``/api/v1/auth``, and each cookie route also requires the ``X-Haven-CSRF: 1`` header, which a
cross-site form cannot send and a cross-origin script cannot send without a CORS preflight
that the API only grants to the operator's ``HAVEN_CORS_ORIGINS``. The header rather than a
JSON content type because signing in posts the same form fields as ``/auth/token``.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import UTC, datetime, timedelta

from api.auth.service import Account
from api.runtime import ApiRuntime
from haven.auth.principal import Principal
from haven.db.engine import transaction
from haven.db.repositories import AuditLog, BrowserSessionRepository, PlatformRepository
from haven.db.tables import BrowserSession
from haven.errors import Unauthenticated

COOKIE = "haven_session"
COOKIE_PATH = "/api/v1/auth"
CSRF_HEADER = "X-Haven-CSRF"
# Anything longer is not a secret this API made (43 characters); refused unread.
MAX_SECRET_LENGTH = 128


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def secret_hash(secret: str) -> str:
    # A 256-bit random secret needs no slow hash: guessing it is hopeless either way.
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def start(runtime: ApiRuntime, account: Account, secret: str, request_id: str | None) -> None:
    """Store a new session for a user who has just proved their password."""
    now = datetime.now(UTC)
    with transaction(runtime.session_factory) as session:
        sessions = BrowserSessionRepository(session)
        # The user's ended sessions go: the table holds live sessions and recent ones only
        # (the audit log keeps the history).
        sessions.delete_ended(account.user_id, now, runtime.settings.session_idle_minutes)
        browser_session = sessions.add(
            BrowserSession(
                tenant_id=account.tenant_id,
                user_id=account.user_id,
                secret_hash=secret_hash(secret),
                token_version=account.token_version,
                last_used_at=now,
                expires_at=now + timedelta(hours=runtime.settings.session_max_hours),
            )
        )
        AuditLog(session, account.principal, request_id).record(
            "session.sign_in",
            target_type="user",
            target_id=account.user_id,
            tenant_id=account.tenant_id,
            username=account.username,
            session_id=str(browser_session.id),
        )


def keep_after_password_change(
    runtime: ApiRuntime, secret: str, user_id: uuid.UUID, token_version: int
) -> bool:
    """The browser session a password was changed from goes on (every other one has ended
    with the token version): it moves to the new version if it is that user's and live."""
    if len(secret) > MAX_SECRET_LENGTH:
        return False
    now = datetime.now(UTC)
    with transaction(runtime.session_factory) as session:
        browser_session = BrowserSessionRepository(session).by_secret_hash(secret_hash(secret))
        if (
            browser_session is None
            or browser_session.user_id != user_id
            or browser_session.revoked_at is not None
            or now >= browser_session.expires_at
        ):
            return False
        browser_session.token_version = token_version
        browser_session.last_used_at = now
        return True


def refresh(runtime: ApiRuntime, secret: str) -> Principal:
    """The user a live session stands for, as they are now; the session's idle clock starts
    again. ``Unauthenticated`` with the reason otherwise."""
    if len(secret) > MAX_SECRET_LENGTH:
        raise Unauthenticated("no such session", code="session.unknown")
    now = datetime.now(UTC)
    settings = runtime.settings
    with transaction(runtime.session_factory) as session:
        browser_session = BrowserSessionRepository(session).by_secret_hash(secret_hash(secret))
        if browser_session is None:
            raise Unauthenticated("no such session", code="session.unknown")
        if browser_session.revoked_at is not None:
            raise Unauthenticated("the session has ended; sign in again", code="session.ended")
        idle_until = browser_session.last_used_at + timedelta(minutes=settings.session_idle_minutes)
        if now >= browser_session.expires_at or now >= idle_until:
            raise Unauthenticated("the session has expired; sign in again", code="session.expired")
        platform = PlatformRepository(session)
        user = platform.user_by_id(browser_session.user_id)
        tenant = platform.tenant(browser_session.tenant_id)
        if user is None or not user.is_active or tenant is None or not tenant.is_active:
            raise Unauthenticated("account is disabled", code="account.disabled")
        if user.token_version != browser_session.token_version:
            # The password or the role changed since the sign-in.
            raise Unauthenticated("the session has ended; sign in again", code="session.ended")
        browser_session.last_used_at = now
        return Principal(
            subject_id=user.id, tenant_id=user.tenant_id, role=user.role, version=user.token_version
        )


def end(runtime: ApiRuntime, secret: str, request_id: str | None) -> uuid.UUID | None:
    """Revoke the session (sign-out); the id of the session ended, None when there was no
    live one (signing out twice is not an error)."""
    if len(secret) > MAX_SECRET_LENGTH:
        return None
    with transaction(runtime.session_factory) as session:
        browser_session = BrowserSessionRepository(session).by_secret_hash(secret_hash(secret))
        if browser_session is None or browser_session.revoked_at is not None:
            return None
        browser_session.revoked_at = datetime.now(UTC)
        user = PlatformRepository(session).user_by_id(browser_session.user_id)
        actor = (
            Principal(
                subject_id=user.id,
                tenant_id=user.tenant_id,
                role=user.role,
                version=user.token_version,
            )
            if user is not None
            else None
        )
        AuditLog(session, actor, request_id).record(
            "session.sign_out",
            target_type="user",
            target_id=browser_session.user_id,
            tenant_id=browser_session.tenant_id,
            username=user.username if user is not None else None,
            session_id=str(browser_session.id),
        )
        return browser_session.id
