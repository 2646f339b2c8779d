"""The web app's typed client is the API's contract: `npm run build` (and so `make install`)
fails when web/src/api/schema.d.ts is not what the API's code gives."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.processes import ROOT

pytestmark = pytest.mark.web

SCRIPT = ROOT / "web" / "scripts" / "openapi.sh"
SCHEMA = ROOT / "web" / "src" / "api" / "schema.d.ts"


def check(schema: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HAVEN_WEB_SCHEMA": str(schema)}
    return subprocess.run(
        ["bash", str(SCRIPT), "--check"], env=env, capture_output=True, text=True, check=False
    )


def test_the_committed_client_matches_the_api_and_a_stale_one_fails_the_build(
    tmp_path: Path,
) -> None:
    current = check(SCHEMA)
    assert current.returncode == 0, current.stderr
    assert "matches the API's OpenAPI schema" in current.stdout

    # A client from before a change of the contract: a field the API no longer has.
    text = SCHEMA.read_text()
    assert "tenant_slug: string;" in text
    stale = tmp_path / "schema.d.ts"
    stale.write_text(text.replace("tenant_slug: string;", "tenant_name: string;", 1))
    refused = check(stale)
    assert refused.returncode == 1
    assert "does not match the API's OpenAPI schema" in refused.stderr
    assert "tenant_slug" in refused.stderr  # the diff says what changed
