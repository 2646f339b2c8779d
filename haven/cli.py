"""The ``haven`` command line: database, administration and (see ``models.cli``) models."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib.metadata import EntryPoint, entry_points
from typing import Annotated, Any

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


# -- maintenance ---------------------------------------------------------------------------

maintenance_app = typer.Typer(help="Upkeep of the index after an upgrade.", no_args_is_help=True)
app.add_typer(maintenance_app, name="maintenance")


@maintenance_app.command("relex")
def relex(
    languages: Annotated[
        str, typer.Option(envvar="HAVEN_LANGUAGES", help="languages detected among (ISO 639-1)")
    ] = "en,ru",
) -> None:
    """Recompute the lexical vectors and languages of chunks indexed by an earlier analyzer
    (see haven/relex.py); dense vectors are kept. With the embedded store, stop Haven first
    (one process at a time may open it)."""
    from emb.settings import EmbSettings
    from haven.language import Detector
    from haven.relex import record_languages, relex_index
    from haven.vectors import close_embedded, make_index, make_qdrant

    settings = StoreSettings()
    store = make_qdrant(settings)
    try:
        report = relex_index(
            make_index(settings, store), Detector(languages.split(",")), EmbSettings().bm25
        )
    finally:
        store.close() if settings.qdrant_url else close_embedded(settings)
    record_languages(_admin_session(), report)
    typer.echo(
        f"{report.updated} of {report.seen} chunks re-analyzed, "
        f"{len(report.document_langs)} documents' languages set"
    )


# -- re-index and clean-up (nightly maintenance; see haven/reindex.py, haven/cleanup.py) ----


def _maintenance_context() -> Any:
    """A maintenance task's context on a worker runtime of this process (with the embedded
    store, only while Haven is stopped: one process at a time may open it)."""
    from haven.queueing import create_celery
    from workers.maintenance.tasks import TaskContext
    from workers.runtime import WorkerRuntime
    from workers.settings import WorkerSettings

    settings = WorkerSettings()

    def progress(done: int, total: int, label: str) -> None:
        typer.echo(f"{label}: {done}/{total}", err=True)

    rt = WorkerRuntime(settings=settings, celery=create_celery(settings))
    return TaskContext(rt=rt, job_id=None, params={}, progress=progress)


@maintenance_app.command("re-index")
def re_index(
    cancel: Annotated[bool, typer.Option("--cancel", help="stop the running build")] = False,
    rollback: Annotated[
        bool, typer.Option("--rollback", help="serve the previous collection again")
    ] = False,
    status: Annotated[bool, typer.Option("--status", help="show the index pointer")] = False,
) -> None:
    """Re-embed every chunk into a new collection with the embedding aliases' current
    models, gate it and switch (blue/green; see haven/reindex.py). --cancel, --rollback and
    --status only touch PostgreSQL and work while Haven runs."""
    import json

    from haven.index_pointer import IndexPointers
    from haven.reindex import request_cancel
    from haven.reindex import rollback as roll_back

    if sum((cancel, rollback, status)) > 1:
        typer.echo("choose one of --cancel, --rollback, --status", err=True)
        raise typer.Exit(2)
    settings = StoreSettings()
    factory = _admin_session()
    try:
        if status:
            with transaction(factory) as session:
                pointer = IndexPointers(session, settings.qdrant_collection).read()
            typer.echo(json.dumps(pointer.to_json(), indent=2))
            return
        if cancel:
            pointer = request_cancel(factory, settings.qdrant_collection)
            building = pointer.building.collection if pointer.building else "?"
            typer.echo(f"canceling the re-index into {building}")
            return
        if rollback:
            pointer = roll_back(factory, settings.qdrant_collection)
            typer.echo(f"serving {pointer.live.collection} again ({pointer.live.models})")
            return
    except DomainError as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(1) from exc
    from workers.maintenance.reindex import reindex_now

    ctx = _maintenance_context()
    try:
        typer.echo(json.dumps(reindex_now(ctx), indent=2, default=str))
    except DomainError as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(1) from exc
    finally:
        _close_store(ctx.rt.settings)


@maintenance_app.command("cleanup")
def cleanup(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="report only")] = False,
) -> None:
    """Find orphans between the stores and remove them (rows whose object is gone are only
    reported); see haven/cleanup.py."""
    import json

    from workers.maintenance.cleanup import cleanup as run_cleanup

    ctx = _maintenance_context()
    ctx.params["dry_run"] = dry_run
    try:
        typer.echo(json.dumps(run_cleanup(ctx), indent=2, default=str))
    finally:
        _close_store(ctx.rt.settings)


def _close_store(settings: StoreSettings) -> None:
    from haven.vectors import close_embedded

    if not settings.qdrant_url:
        close_embedded(settings)


if __name__ == "__main__":
    app()
