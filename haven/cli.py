"""The ``haven`` command line: database, administration and (see ``models.cli``) models."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib.metadata import EntryPoint, entry_points
from typing import Annotated

import typer
from alembic import command
from sqlalchemy.orm import Session, sessionmaker

from haven import read_only
from haven.auth import accounts
from haven.cli_support import alembic_config
from haven.db.engine import make_engine, make_session_factory, transaction
from haven.db.repositories import AuditLog, PlatformRepository
from haven.db.tables import Role
from haven.errors import DomainError, NotFound
from haven.settings import StoreSettings
from models.cli import app as models_app

app = typer.Typer(help="Haven: the offline RAG platform.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
admin_app = typer.Typer(help="Tenants and users.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(admin_app, name="admin")
app.add_typer(models_app, name="models")


def add_plugin_commands(app: typer.Typer, entries: Iterable[EntryPoint] | None = None) -> None:
    """Commands that other installed packages add to ``haven`` (entry-point group
    ``haven.cli``), e.g. ``haven up`` from ``devstack``: this package never names them."""
    for entry in entry_points(group="haven.cli") if entries is None else entries:
        try:
            command_function = entry.load()
        except ModuleNotFoundError as exc:
            # Registered by the project's metadata but not shipped in this installation
            # (the service images leave the local launcher out): no such command here.
            if exc.name == entry.module.split(".")[0]:
                continue
            raise
        app.command(entry.name)(command_function)


add_plugin_commands(app)


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply the schema migrations (alembic upgrade)."""
    url = StoreSettings().database_url.get_secret_value()
    command.upgrade(alembic_config(url), revision)
    typer.echo(f"database at {revision}")


@db_app.command("check")
def db_check() -> None:
    """Fail when the ORM models and the migrations disagree."""
    command.check(alembic_config(StoreSettings().database_url.get_secret_value()))


def _admin_session() -> sessionmaker[Session]:
    return make_session_factory(make_engine(StoreSettings()))


@admin_app.command("create-tenant")
def create_tenant(
    slug: str,
    name: Annotated[str | None, typer.Option(help="display name")] = None,
) -> None:
    """Create a tenant and print its id."""
    try:
        with transaction(_admin_session()) as session:
            audit = AuditLog(session, None, None)
            tenant = accounts.create_tenant(session, audit, slug=slug, name=name or slug)
            typer.echo(str(tenant.id))
    except DomainError as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(1) from exc


@admin_app.command("create-user")
def create_user(
    tenant: Annotated[str, typer.Option(help="tenant slug")],
    username: Annotated[str, typer.Option()],
    role: Annotated[Role, typer.Option()] = Role.VIEWER,
    password: Annotated[
        str,
        typer.Option(
            prompt=True, hide_input=True, confirmation_prompt=True, envvar="HAVEN_NEW_USER_PASSWORD"
        ),
    ] = "",
) -> None:
    """Create a user in a tenant (role admin makes a platform administrator).

    The operator at the command line holds the database credentials, so no role check
    applies here (the API checks every caller's role)."""
    if len(password) < 10:
        typer.echo("password must have at least 10 characters", err=True)
        raise typer.Exit(2)
    try:
        with transaction(_admin_session()) as session:
            found = PlatformRepository(session).tenant_by_slug(tenant)
            if found is None:
                raise NotFound("tenant")
            user = accounts.create_user(
                session,
                AuditLog(session, None, None),
                tenant_id=found.id,
                username=username,
                password=password,
                role=role,
                actor=None,
            )
            typer.echo(str(user.id))
    except DomainError as exc:
        typer.echo(
            f"{exc.message}: {tenant!r}" if isinstance(exc, NotFound) else exc.message, err=True
        )
        raise typer.Exit(1) from exc


# --- read-only mode ---------------------------------------------------------------------------

read_only_app = typer.Typer(
    help="Read-only mode: pause every write (uploads, changes, new jobs); reads and answers go on.",
    no_args_is_help=True,
)
admin_app.add_typer(read_only_app, name="read-only")


@contextmanager
def _platform_transaction() -> Iterator[Session]:
    engine = make_engine(StoreSettings())
    try:
        with transaction(make_session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()


def _echo_state(state: read_only.ReadOnlyState) -> None:
    if state.on:
        since = state.since.isoformat() if state.since else "?"
        typer.echo(f"read-only: on since {since} ({state.reason})")
    else:
        typer.echo("read-only: off")


@read_only_app.command("on")
def read_only_on(
    reason: Annotated[str, typer.Option(help="shown to refused callers and in /api/version")],
) -> None:
    """Switch read-only mode on (every API replica and worker sees it within seconds)."""
    with _platform_transaction() as session:
        state = read_only.switch(
            session, AuditLog(session, None, None), on=True, reason=reason, by="cli"
        )
    _echo_state(state)


@read_only_app.command("off")
def read_only_off(
    reason: Annotated[str | None, typer.Option(help="why, for the audit log")] = None,
) -> None:
    """Switch read-only mode off: writes and new jobs go on."""
    with _platform_transaction() as session:
        state = read_only.switch(
            session, AuditLog(session, None, None), on=False, reason=reason, by="cli"
        )
    _echo_state(state)


@read_only_app.command("status")
def read_only_status() -> None:
    """Whether read-only mode is on, since when and why."""
    with _platform_transaction() as session:
        _echo_state(read_only.read(session))


if __name__ == "__main__":
    app()
