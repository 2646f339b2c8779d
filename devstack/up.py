"""``haven up``: run Haven on this machine on its embedded defaults, in one command.

It prepares the stores (creates and migrates the database, starts the embedded object store
when no S3 endpoint is configured, publishes the default models), then starts the services
as child processes, restarts any that dies (see ``devstack.supervisor``) and stops them all
on Ctrl-C. Its state (logs, objects, vectors, secrets) lives in ``var/`` or
``HAVEN_STATE_DIR``. Production runs the same services apart (see docker-stack.yml).
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import psycopg
import typer
from alembic import command
from sqlalchemy.engine import make_url

from devstack import objectstore
from devstack.state import ROOT, s3_credentials, signing_keys, state_dir
from devstack.supervisor import Service, StartFailed, Stopped, Supervisor
from haven.auth import accounts
from haven.cli_support import alembic_config
from haven.db.engine import make_engine, make_session_factory, transaction
from haven.db.repositories import AuditLog, PlatformRepository
from haven.db.tables import Role
from haven.settings import StoreSettings
from models.defaults import publish_default_embedding, publish_default_llm
from models.store import registry_from_settings


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


def _uvicorn(factory: str, port: int) -> list[str]:
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


def _environment(state: Path) -> tuple[dict[str, str], Service | None]:
    """Settings every child gets from the launcher, and the embedded object store if any."""
    env: dict[str, str] = {}
    if "HAVEN_JWT_KEYS" in os.environ:
        typer.echo("signing tokens with HAVEN_JWT_KEYS from the environment")
    else:
        keys, created = signing_keys(state)
        env.update(keys.environment())
        typer.echo(
            f"{'created' if created else 'using'} this installation's token signing key "
            f"{keys.active_kid!r} ({state / 'secrets'})"
        )
    # The web app, once built (`make up` builds web/out): the API serves it at /.
    if "HAVEN_WEB_DIR" not in os.environ and (ROOT / "web" / "out").is_dir():
        env["HAVEN_WEB_DIR"] = str(ROOT / "web" / "out")
    # The embedded vector store and the model cache live in the state folder too.
    for variable, folder in (("HAVEN_QDRANT_PATH", "qdrant"), ("HAVEN_MODEL_CACHE_DIR", "models")):
        if variable not in os.environ:
            env[variable] = str(state / folder)
    if "HAVEN_S3_ENDPOINT" in os.environ:
        return env, None
    port = int(os.environ.get("HAVEN_LOCAL_S3_PORT", objectstore.DEFAULT_PORT))
    if objectstore.port_in_use(port):
        raise StartFailed(
            f"port {port} is taken, and the embedded object store needs it: stop what listens "
            "there, or set HAVEN_LOCAL_S3_PORT to a free port, or HAVEN_S3_ENDPOINT to an "
            "S3 server of your own"
        )
    endpoint = f"127.0.0.1:{port}"
    credentials = s3_credentials(state, endpoint)
    env.update(
        {
            "HAVEN_S3_ENDPOINT": endpoint,
            "HAVEN_S3_ACCESS_KEY": credentials.access_key,
            "HAVEN_S3_SECRET_KEY": credentials.secret_key,
            "HAVEN_S3_SECURE": "false",
        }
    )
    typer.echo(
        f"No HAVEN_S3_ENDPOINT set: serving S3 on :{port} from {objectstore.data_dir(state)} "
        "(SeaweedFS; kept across restarts)"
    )
    store = Service(
        "s3",
        objectstore.command(state, port, credentials),
        f"http://127.0.0.1:{port}/healthz",
        env=objectstore.environment(),
    )
    return env, store


def run(api_port: int = 8080) -> None:
    state = state_dir()
    log_dir = state / "log"
    stop = threading.Event()

    # While preparing, a stop request interrupts even a long step (migrations, model uploads);
    # once watching or stopping, it only sets the flag, so no child is left half-handled.
    interruptible = True

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stop.set()
        if interruptible:
            raise Stopped

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, request_stop)
    supervisor = Supervisor(ROOT, log_dir, stop, typer.echo)
    try:
        env, store = _environment(state)
        # The launcher's own steps (migrations, models) read the same settings as its children.
        os.environ.update(env)
        if store is not None:
            supervisor.start(store, timeout=60)
        settings = StoreSettings()
        ensure_database(settings)
        bootstrap_admin(settings)
        publish_models(settings)

        llm_port = int(os.environ.get("HAVEN_LOCAL_LLM_PORT", "8083"))
        emb_port = int(os.environ.get("HAVEN_LOCAL_EMB_PORT", "8082"))
        env.setdefault("HAVEN_EMB_URL", f"http://127.0.0.1:{emb_port}")
        env.setdefault("HAVEN_LLM_URL", f"http://127.0.0.1:{llm_port}")
        services = [
            Service(
                "llm",
                _uvicorn("llm.main:create_app", llm_port),
                f"http://127.0.0.1:{llm_port}/readyz",
            ),
            Service(
                "emb",
                _uvicorn("emb.main:create_app", emb_port),
                f"http://127.0.0.1:{emb_port}/readyz",
            ),
        ]
        # Without a Qdrant server the API and the worker share one process (embedded Qdrant);
        # with one, they run apart as in production.
        api_ready = f"http://127.0.0.1:{api_port}/readyz"
        if settings.qdrant_url:
            services.append(Service("api", _uvicorn("api.main:create_app", api_port), api_ready))
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
                        "devstack.allinone",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(api_port),
                    ],
                    api_ready,
                )
            )
        for service in services:
            service.env.update(env)
            supervisor.start(service)
        typer.secho(
            f"\nHaven is up: http://127.0.0.1:{api_port}  (API docs at /docs; logs in {log_dir})."
            "\nA service that stops is reported here and restarted. Ctrl-C stops everything.",
            fg=typer.colors.GREEN,
        )
        interruptible = False
        supervisor.watch()
    except Stopped:
        pass
    except StartFailed as exc:
        typer.secho(f"\nhaven up could not start: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    finally:
        interruptible = False
        typer.echo("stopping Haven...")
        supervisor.stop_all()
