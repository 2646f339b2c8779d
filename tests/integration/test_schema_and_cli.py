"""The schema comes only from Alembic, matches the models, and the CLI bootstraps a tenant."""

from __future__ import annotations

import os
import subprocess
import sys

from alembic import command
from fastapi.testclient import TestClient

from haven.cli_support import alembic_config
from tests.fixtures.api import PASSWORD, login, unique
from tests.fixtures.services import create_database


def test_upgrade_on_empty_database_then_no_drift_and_downgrade() -> None:
    url = create_database(f"haven_schema_{os.getpid()}")
    config = alembic_config(url)
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")
    command.check(config)  # raises when models and migrations disagree
    command.downgrade(config, "base")
    command.upgrade(config, "head")


def _haven(database_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "haven.cli", *args],
        env={**os.environ, "HAVEN_DATABASE_URL": database_url, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_bootstraps_a_tenant_and_user(database_url: str, api_client: TestClient) -> None:
    assert _haven(database_url, "db", "upgrade").returncode == 0
    slug = unique("cli")
    created = _haven(database_url, "admin", "create-tenant", slug, "--name", "From the CLI")
    assert created.returncode == 0, created.stderr
    again = _haven(database_url, "admin", "create-tenant", slug)
    assert again.returncode == 1
    assert "already exists" in again.stderr

    username = f"owner@{slug}"
    user = _haven(
        database_url,
        "admin",
        "create-user",
        "--tenant",
        slug,
        "--username",
        username,
        "--role",
        "tenant_admin",
        HAVEN_NEW_USER_PASSWORD=PASSWORD,
    )
    assert user.returncode == 0, user.stderr
    token = login(api_client, username)
    me = api_client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).json()
    assert me["tenant_slug"] == slug
    assert me["role"] == "tenant_admin"
