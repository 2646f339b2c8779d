"""Settings come from the environment and /run/secrets; production refuses development secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from api.settings import ApiSettings
from haven.settings import DEV_JWT_KEYS

REAL_KEYS = json.dumps({"prod-1": "p" * 48})


def test_development_defaults_work_with_the_installations_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HAVEN_JWT_KEYS", REAL_KEYS)
    settings = ApiSettings()
    assert settings.env == "development"
    assert settings.jwt_active_kid == "prod-1"


def test_only_tests_fall_back_to_the_development_key(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="HAVEN_JWT_KEYS is not set"):
        ApiSettings()
    monkeypatch.setenv("HAVEN_ENV", "test")
    assert ApiSettings().signing_keys() == json.loads(DEV_JWT_KEYS)


def test_production_refuses_development_jwt_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAVEN_ENV", "production")
    monkeypatch.setenv("HAVEN_S3_SECRET_KEY", "s" * 40)
    monkeypatch.setenv("HAVEN_DATABASE_URL", "postgresql+psycopg://haven:pw@db/haven")
    monkeypatch.setenv("HAVEN_JWT_KEYS", DEV_JWT_KEYS)
    with pytest.raises(ValidationError, match="development key"):
        ApiSettings()


def test_production_refuses_development_store_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAVEN_ENV", "production")
    monkeypatch.setenv("HAVEN_JWT_KEYS", REAL_KEYS)
    monkeypatch.setenv("HAVEN_JWT_ACTIVE_KID", "prod-1")
    with pytest.raises(ValidationError, match="HAVEN_S3_SECRET_KEY"):
        ApiSettings()


def test_production_settings_from_swarm_secrets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "haven_jwt_keys").write_text(REAL_KEYS)
    (tmp_path / "haven_s3_secret_key").write_text("s" * 40)
    (tmp_path / "haven_database_url").write_text("postgresql+psycopg://haven:pw@db/haven")
    monkeypatch.setenv("HAVEN_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("HAVEN_ENV", "production")
    monkeypatch.setenv("HAVEN_JWT_ACTIVE_KID", "prod-1")
    settings = ApiSettings()
    assert settings.signing_keys() == {"prod-1": "p" * 48}
    assert settings.s3_secret_key.get_secret_value() == "s" * 40
    assert "pw" not in repr(settings)  # secrets never show up in logs or reprs


def test_active_kid_must_be_a_known_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAVEN_JWT_KEYS", REAL_KEYS)
    monkeypatch.setenv("HAVEN_JWT_ACTIVE_KID", "missing")
    with pytest.raises(ValidationError, match="not in HAVEN_JWT_KEYS"):
        ApiSettings()


def test_short_keys_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAVEN_JWT_KEYS", json.dumps({"k": "short"}))
    monkeypatch.setenv("HAVEN_JWT_ACTIVE_KID", "k")
    with pytest.raises(ValidationError, match="at least 32 characters"):
        ApiSettings()
