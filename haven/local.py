"""``haven up``: run Haven on this machine on its embedded defaults, in one command.

It prepares the stores (creates and migrates the database, starts a local S3 endpoint when
none is configured, publishes the default models), then starts the services as child
processes and stops them all on Ctrl-C. Production runs the same services apart (see
docker-stack.yml).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import typer
from alembic import command
from sqlalchemy.engine import make_url

from haven.auth import accounts
from haven.cli_support import alembic_config
from haven.db.engine import make_engine, make_session_factory, transaction
from haven.db.repositories import AuditLog, PlatformRepository
from haven.db.tables import Role
from haven.settings import StoreSettings
from models.defaults import publish_default_embedding, publish_default_llm
from models.store import registry_from_settings

ROOT = Path(__file__).resolve().parents[1]
LOCAL_S3_PORT = 9000


@dataclass
class Service:
    name: str
    argv: list[str]
    ready_url: str
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def ensure_database(settings: StoreSettings) -> None:
    url = make_url(settings.database_url.get_secret_value())
    admin_dsn = url.set(drivername="postgresql", database="postgres").render_as_string(
        hide_password=False
    )
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,))
        if exists.fetchone() is None:
            conn.execute(f'CREATE DATABASE "{url.database}"')
            typer.echo(f"created database {url.database}")
    command.upgrade(alembic_config(settings.database_url.get_secret_value()), "head")


def bootstrap_admin(settings: StoreSettings) -> None:
    """On an empty installation, create tenant ``default`` and a platform admin ``admin``."""
    factory = make_session_factory(make_engine(settings))
    with transaction(factory) as session:
        platform = PlatformRepository(session)
        if platform.tenants():
            return
        password = os.environ.get("HAVEN_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        audit = AuditLog(session, None, None)
        tenant = accounts.create_tenant(session, audit, slug="default", name="Default")
        accounts.create_user(
            session,
            audit,
            tenant_id=tenant.id,
            username="admin",
            password=password,
            role=Role.ADMIN,
            actor=None,
        )
    typer.secho(
        f"\nFirst start: sign in as 'admin' with password {password!r} (shown only now).\n",
        fg=typer.colors.YELLOW,
    )


def publish_models(settings: StoreSettings) -> None:
    """Publish the bundled default models (idempotent: known versions are not re-uploaded)."""
    registry = registry_from_settings(settings)
    for manifest in (publish_default_embedding(registry), publish_default_llm(registry)):
        typer.echo(f"{manifest.type} model {manifest.name} {manifest.version} published")


def _start(service: Service, log_dir: Path) -> None:
    log = (log_dir / f"{service.name}.log").open("ab")
    service.process = subprocess.Popen(  # noqa: S603 - argv is built here, not from input
        service.argv,
        cwd=ROOT,
        env={**os.environ, **service.env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _wait_ready(service: Service, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert service.process is not None
        if service.process.poll() is not None:
            raise RuntimeError(f"{service.name} exited with {service.process.returncode}")
        try:
            if httpx.get(service.ready_url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{service.name} was not ready within {timeout:.0f}s ({service.ready_url})")


def run(api_port: int = 8080) -> None:
    log_dir = ROOT / "var" / "log"
    log_dir.mkdir(parents=True, exist_ok=True)
    services: list[Service] = []
    env: dict[str, str] = {}

    if "HAVEN_S3_ENDPOINT" not in os.environ:
        env["HAVEN_S3_ENDPOINT"] = f"127.0.0.1:{LOCAL_S3_PORT}"
        os.environ.update(env)
        if not _port_open(LOCAL_S3_PORT):
            typer.echo(
                "No HAVEN_S3_ENDPOINT set: starting a local in-memory S3 endpoint on "
                f":{LOCAL_S3_PORT} (its contents last until 'haven up' stops; point "
                "HAVEN_S3_ENDPOINT at MinIO to keep them)."
            )
            services.append(
                Service(
                    "s3",
                    [
                        sys.executable,
                        "-m",
                        "moto.server",
                        "-H",
                        "127.0.0.1",
                        "-p",
                        str(LOCAL_S3_PORT),
                    ],
                    f"http://127.0.0.1:{LOCAL_S3_PORT}/moto-api/",
                )
            )
    settings = StoreSettings()
    ensure_database(settings)
    bootstrap_admin(settings)

    def uvicorn(factory: str, port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            factory,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]

    llm_port = int(os.environ.get("HAVEN_LOCAL_LLM_PORT", "8083"))
    emb_port = int(os.environ.get("HAVEN_LOCAL_EMB_PORT", "8082"))
    env.setdefault("HAVEN_EMB_URL", f"http://127.0.0.1:{emb_port}")
    env.setdefault("HAVEN_LLM_URL", f"http://127.0.0.1:{llm_port}")
    services.append(
        Service(
            "llm", uvicorn("llm.main:create_app", llm_port), f"http://127.0.0.1:{llm_port}/readyz"
        )
    )
    services.append(
        Service(
            "emb", uvicorn("emb.main:create_app", emb_port), f"http://127.0.0.1:{emb_port}/readyz"
        )
    )
    # Without a Qdrant server the API and the worker share one process (embedded Qdrant);
    # with one, they run apart as in production.
    if settings.qdrant_url:
        services.append(
            Service(
                "api",
                uvicorn("api.main:create_app", api_port),
                f"http://127.0.0.1:{api_port}/readyz",
            )
        )
        services.append(
            Service(
                "worker",
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "workers.main",
                    "worker",
                    "-B",
                    "--loglevel",
                    "INFO",
                ],
                "",
            )
        )
    else:
        services.append(
            Service(
                "api+worker",
                [
                    sys.executable,
                    "-m",
                    "workers.allinone",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(api_port),
                ],
                f"http://127.0.0.1:{api_port}/readyz",
            )
        )

    try:
        for service in services:
            service.env.update(env)
            if service.name == "llm":
                publish_models(settings)
            _start(service, log_dir)
            if service.ready_url:
                _wait_ready(service, timeout=600)
            typer.echo(f"{service.name} started ({service.ready_url or 'no HTTP endpoint'})")
        typer.secho(
            f"\nHaven is up: http://127.0.0.1:{api_port}  (API docs at /docs; logs in var/log/)."
            "\nCtrl-C stops it.",
            fg=typer.colors.GREEN,
        )
        # Blocked only now: the children were started with the default signal mask.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        for service in reversed(services):
            if service.process and service.process.poll() is None:
                service.process.terminate()
        for service in services:
            if service.process:
                try:
                    service.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    service.process.kill()
