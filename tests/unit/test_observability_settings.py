"""Logs to a rotated file with secrets masked, which requests read-only mode refuses, and
tracing that costs nothing when it is off."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from logging.handlers import TimedRotatingFileHandler
from pathlib import Path

import structlog

from api.read_only import is_write
from api.settings import ApiSettings
from haven.telemetry import configure_logging, configure_service_logging, settings_secrets
from tests.fixtures.processes import ROOT


def test_reads_answers_and_sign_in_pass_read_only_mode_and_every_other_write_does_not() -> None:
    for method, path in [
        ("GET", "/api/v1/documents"),
        ("HEAD", "/api/v1/documents/x"),
        ("POST", "/api/v1/search"),
        ("POST", "/api/v1/chats/0b4c/messages"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/api/v1/auth/token"),
        ("PUT", "/api/v1/admin/read-only"),
    ]:
        assert not is_write(method, path), (method, path)
    for method, path in [
        ("POST", "/api/v1/documents"),
        ("POST", "/api/v1/documents/uploads"),
        ("DELETE", "/api/v1/documents/x"),
        ("PATCH", "/api/v1/admin/users/u"),
        ("POST", "/api/v1/admin/api-keys"),
        ("POST", "/api/v1/chats"),
        ("POST", "/api/v1/jobs/j/retry"),
        ("POST", "/api/v1/auth/password"),
        ("POST", "/api/v1/chats/c/messages/extra"),
    ]:
        assert is_write(method, path), (method, path)


def test_the_log_file_is_json_rotated_with_retention_and_masks_every_configured_secret(
    tmp_path: Path,
) -> None:
    settings = ApiSettings(
        env="test",
        database_url="postgresql+psycopg://haven:s3cr3t-db-p%40ss@db:5432/haven",
        s3_secret_key="object-store-secret-value",
        jwt_keys='{"k1": "a-signing-key-of-at-least-32-characters!"}',
        log_file=tmp_path / "logs" / "api.log",
        log_rotate_days=2,
        log_retention_files=7,
    )
    found = settings_secrets(settings)
    assert "s3cr3t-db-p@ss" in found and "s3cr3t-db-p%40ss" in found
    assert "a-signing-key-of-at-least-32-characters!" in found
    try:
        configure_service_logging(settings)
        handlers = logging.getLogger().handlers
        rotating = [h for h in handlers if isinstance(h, TimedRotatingFileHandler)]
        assert len(rotating) == 1
        assert rotating[0].interval == 2 * 24 * 3600 and rotating[0].backupCount == 7
        structlog.contextvars.bind_contextvars(request_id="r-1", tenant_id="t-1")
        structlog.get_logger("test").warning(
            "store.failed", error="connect to postgresql://haven:s3cr3t-db-p@ss@db failed"
        )
        logging.getLogger("library").error("key a-signing-key-of-at-least-32-characters! used")
        logging.getLogger("library").error("secret object-store-secret-value sent")
        for handler in handlers:
            handler.flush()
        lines = (tmp_path / "logs" / "api.log").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert [r["event"] for r in records][:1] == ["store.failed"]
        assert records[0]["request_id"] == "r-1" and records[0]["tenant_id"] == "t-1"
        text = "\n".join(lines)
        for secret in found:
            assert secret not in text
        assert text.count("***") == 3
    finally:
        structlog.contextvars.clear_contextvars()
        configure_logging()


def test_without_an_endpoint_no_opentelemetry_module_is_loaded_to_serve_requests(
    tmp_path: Path,
) -> None:
    """The API built and serving requests with tracing off loads no tracer, exporter or
    instrumentation (redis-py imports the SDK's metrics module when it is installed, for its
    own observability, which stays off unless an application turns it on)."""
    script = (
        "import sys\n"
        "from fastapi.testclient import TestClient\n"
        "from api.main import create_app\n"
        "from api.settings import ApiSettings\n"
        f"app = create_app(ApiSettings(env='test', qdrant_path={str(tmp_path)!r}))\n"
        "client = TestClient(app)\n"
        "assert client.get('/healthz').status_code == 200\n"
        "assert client.get('/api/v1/documents').status_code in (401, 503)\n"
        "loaded = [m for m in sys.modules if m.startswith(('opentelemetry.sdk.trace',"
        " 'opentelemetry.instrumentation', 'opentelemetry.exporter'))]\n"
        "assert not loaded, loaded\n"
        "from haven import tracing\n"
        "assert not tracing.enabled()\n"
        "print('clean')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(ROOT),
            "HAVEN_SECRETS_DIR": "/nonexistent-haven-secrets",
            "HAVEN_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/none",
        },
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "clean" in result.stdout
