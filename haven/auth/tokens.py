"""JWT access tokens (python-jose) with a rotating key set selected by ``kid``.

The active key signs. Every key in the configured set verifies, so rotating is a settings
change: add the next key, make it active, and drop the old one once its tokens have expired.
A token whose ``kid`` is not in the set, whose algorithm is not the configured one (``none``
included), or whose signature or expiry is wrong is refused with a reason.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from jose import ExpiredSignatureError, JWTError, jwt

from haven.auth.principal import Principal
from haven.db.tables import Role
from haven.settings import AuthSettings

ISSUER = "haven"


class TokenError(Exception):
    """A token that cannot be accepted; the message says why (safe to show the caller)."""


class TokenService:
    def __init__(self, settings: AuthSettings) -> None:
        self._keys = settings.signing_keys()
        self._active_kid = settings.jwt_active_kid
        self._algorithm = settings.jwt_algorithm

    def issue(self, principal: Principal, ttl: timedelta) -> tuple[str, datetime]:
        now = datetime.now(UTC)
        expires = now + ttl
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": str(principal.subject_id),
            "tenant": str(principal.tenant_id),
            "roles": [principal.role.value],
            "kind": principal.kind,
            "iat": int(now.timestamp()),
            "exp": int(expires.timestamp()),
            "jti": secrets.token_hex(16),
            "ver": principal.version,
        }
        token = jwt.encode(
            claims,
            self._keys[self._active_kid],
            algorithm=self._algorithm,
            headers={"kid": self._active_kid},
        )
        return token, expires

    def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except JWTError as exc:
            raise TokenError("malformed token") from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg != self._algorithm:
            raise TokenError(f"token algorithm {str(alg)[:20]!r} is not accepted")
        kid = header.get("kid")
        if not kid:
            raise TokenError("token has no key id (kid)")
        if not isinstance(kid, str):  # a list or an object cannot name a key
            raise TokenError("token key id (kid) must be a string")
        key = self._keys.get(kid)
        if key is None:
            raise TokenError(f"unknown signing key {kid!r}")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[self._algorithm],
                issuer=ISSUER,
                options={"require_exp": True, "require_iat": True, "require_sub": True},
            )
        except ExpiredSignatureError as exc:
            raise TokenError("token has expired") from exc
        except JWTError as exc:
            raise TokenError(f"invalid token: {exc}") from exc
        try:
            roles = claims["roles"]
            return Principal(
                subject_id=uuid.UUID(claims["sub"]),
                tenant_id=uuid.UUID(claims["tenant"]),
                role=Role(roles[0]),
                kind="api_key" if claims.get("kind") == "api_key" else "user",
                token_id=str(claims["jti"]),
                version=_version(claims["ver"]),
            )
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise TokenError("token claims are incomplete") from exc


def _version(value: object) -> int:
    # bool is an int to Python; a token version never is.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("ver must be an integer")
    return value
