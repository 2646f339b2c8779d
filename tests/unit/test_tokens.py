"""Signing-key rotation and every way a token can be wrong."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import timedelta

import pytest
from jose import jwt

from haven.auth.principal import Principal
from haven.auth.tokens import TokenError, TokenService
from haven.db.tables import Role
from haven.settings import AuthSettings

OLD = "k-2025"
CUR = "k-2026"
NEXT = "k-2027"
SECRETS = {kid: f"{kid}-secret-{'x' * 40}" for kid in (OLD, CUR, NEXT, "k-2028")}


def service(kids: list[str], active: str) -> TokenService:
    keys = json.dumps({kid: SECRETS[kid] for kid in kids})
    return TokenService(AuthSettings(env="test", jwt_keys=keys, jwt_active_kid=active))


def principal() -> Principal:
    return Principal(subject_id=uuid.uuid4(), tenant_id=uuid.uuid4(), role=Role.EDITOR)


def test_token_round_trip_keeps_claims() -> None:
    svc = service([CUR, NEXT], CUR)
    who = principal()
    token, _ = svc.issue(who, timedelta(minutes=5))
    header = jwt.get_unverified_header(token)
    claims = jwt.get_unverified_claims(token)
    assert header["kid"] == CUR
    assert {"sub", "tenant", "roles", "exp", "iat", "jti"} <= set(claims)
    back = svc.verify(token)
    assert (back.subject_id, back.tenant_id, back.role) == (who.subject_id, who.tenant_id, who.role)


def test_rotation_next_key_old_tokens_and_removed_keys() -> None:
    before = service([CUR, NEXT], CUR)
    signed_by_current, _ = before.issue(principal(), timedelta(minutes=5))

    # A token signed with the next key (e.g. by a replica already rotated) verifies before rotation.
    rotated_early = service([CUR, NEXT], NEXT)
    signed_by_next, _ = rotated_early.issue(principal(), timedelta(minutes=5))
    before.verify(signed_by_next)

    # Rotate: next becomes active, a new next is added, the old active stays to verify.
    after = service([CUR, NEXT, "k-2028"], NEXT)
    after.verify(signed_by_current)
    new_token, _ = after.issue(principal(), timedelta(minutes=5))
    assert jwt.get_unverified_header(new_token)["kid"] == NEXT

    # Once the old key is removed, its tokens are refused.
    pruned = service([NEXT], NEXT)
    with pytest.raises(TokenError, match="unknown signing key"):
        pruned.verify(signed_by_current)
    pruned.verify(new_token)


def test_expired_token_is_refused() -> None:
    svc = service([CUR], CUR)
    token, _ = svc.issue(principal(), timedelta(seconds=-5))
    with pytest.raises(TokenError, match="expired"):
        svc.verify(token)


def test_wrong_signature_is_refused() -> None:
    svc = service([CUR], CUR)
    forged = jwt.encode(
        {
            "sub": str(uuid.uuid4()),
            "tenant": str(uuid.uuid4()),
            "roles": ["admin"],
            "iat": 0,
            "exp": 9999999999,
            "jti": "x",
            "iss": "haven",
        },
        "not-the-key-" + "y" * 40,
        algorithm="HS256",
        headers={"kid": CUR},
    )
    with pytest.raises(TokenError, match="invalid token"):
        svc.verify(forged)


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_alg_none_is_refused() -> None:
    svc = service([CUR], CUR)
    claims = {
        "sub": str(uuid.uuid4()),
        "tenant": str(uuid.uuid4()),
        "roles": ["admin"],
        "iat": 0,
        "exp": 9999999999,
        "jti": "x",
        "iss": "haven",
    }
    unsigned = f"{_b64({'alg': 'none', 'kid': CUR, 'typ': 'JWT'})}.{_b64(claims)}."
    with pytest.raises(TokenError, match="algorithm 'none' is not accepted"):
        svc.verify(unsigned)


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "x" * 50])
def test_malformed_tokens_are_refused(garbage: str) -> None:
    with pytest.raises(TokenError):
        service([CUR], CUR).verify(garbage)


def test_unknown_kid_is_refused() -> None:
    token, _ = service([OLD], OLD).issue(principal(), timedelta(minutes=5))
    with pytest.raises(TokenError, match="unknown signing key 'k-2025'"):
        service([CUR], CUR).verify(token)


@pytest.mark.parametrize("kid", [[CUR], {"k": CUR}, 1])
def test_a_kid_that_is_not_a_string_is_refused(kid: object) -> None:
    svc = service([CUR], CUR)
    token, _ = svc.issue(principal(), timedelta(minutes=5))
    _, claims, signature = token.split(".")
    forged = f"{_b64({'alg': 'HS256', 'typ': 'JWT', 'kid': kid})}.{claims}.{signature}"
    with pytest.raises(TokenError, match="must be a string"):
        svc.verify(forged)


def test_a_token_carries_the_users_token_version() -> None:
    svc = service([CUR], CUR)
    who = Principal(subject_id=uuid.uuid4(), tenant_id=uuid.uuid4(), role=Role.VIEWER, version=7)
    token, _ = svc.issue(who, timedelta(minutes=5))
    assert svc.verify(token).version == 7


def test_a_token_without_a_version_is_refused() -> None:
    """Issued before sessions could be ended: it cannot be checked, so it is not accepted."""
    claims = {
        "sub": str(uuid.uuid4()),
        "tenant": str(uuid.uuid4()),
        "roles": ["viewer"],
        "iat": 0,
        "exp": 9999999999,
        "jti": "x",
        "iss": "haven",
    }
    token = jwt.encode(claims, SECRETS[CUR], algorithm="HS256", headers={"kid": CUR})
    with pytest.raises(TokenError, match="incomplete"):
        service([CUR], CUR).verify(token)
