"""The ``haven`` command line: database, administration and (see ``models.cli``) models."""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Annotated

import typer
from alembic import command

from haven.auth.passwords import hash_password
from haven.cli_support import alembic_config
from haven.db.engine import make_engine, make_session_factory, transaction
from haven.db.repositories import AuditLog, PlatformRepository
from haven.db.tables import Role, Tenant, User
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


@admin_app.command("create-tenant")
def create_tenant(
    slug: str,
    name: Annotated[str | None, typer.Option(help="display name")] = None,
) -> None:
    """Create a tenant and print its id."""
    factory = make_session_factory(make_engine(StoreSettings()))
    with transaction(factory) as session:
        platform = PlatformRepository(session)
        if platform.tenant_by_slug(slug) is not None:
            typer.echo(f"tenant {slug!r} already exists", err=True)
            raise typer.Exit(1)
        tenant = platform.add_tenant(Tenant(slug=slug, name=name or slug))
        AuditLog(session, None, None).record(
            "tenant.create",
            target_type="tenant",
            target_id=tenant.id,
            tenant_id=tenant.id,
            slug=slug,
        )
        typer.echo(str(tenant.id))


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
    """Create a user in a tenant (role admin makes a platform administrator)."""
    if len(password) < 10:
        typer.echo("password must have at least 10 characters", err=True)
        raise typer.Exit(2)
    factory = make_session_factory(make_engine(StoreSettings()))
    with transaction(factory) as session:
        platform = PlatformRepository(session)
        found = platform.tenant_by_slug(tenant)
        if found is None:
            typer.echo(f"no tenant {tenant!r}", err=True)
            raise typer.Exit(1)
        if platform.username_taken(username):
            typer.echo(f"username {username!r} is taken", err=True)
            raise typer.Exit(1)
        user = User(
            tenant_id=found.id, username=username, password_hash=hash_password(password), role=role
        )
        session.add(user)
        session.flush()
        AuditLog(session, None, None).record(
            "user.create",
            target_type="user",
            target_id=user.id,
            tenant_id=found.id,
            username=username,
            role=role.value,
        )
        typer.echo(str(user.id))


if __name__ == "__main__":
    app()
