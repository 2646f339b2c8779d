"""The ``haven`` command line: database, administration and (see ``models.cli``) models."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from importlib.metadata import EntryPoint, entry_points
from typing import Annotated, Any

import typer
from alembic import command
from sqlalchemy import Engine
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
    from haven.index_pointer import IndexPointers
    from haven.language import Detector
    from haven.relex import record_languages, relex_index
    from haven.vectors import close_embedded, make_index, make_qdrant

    settings = StoreSettings()
    with _platform_transaction() as session:  # the live collection (after a re-index)
        pointer = IndexPointers(session, settings.qdrant_collection).read()
    store = make_qdrant(settings)
    try:
        report = relex_index(
            make_index(settings, store, pointer),
            Detector(languages.split(",")),
            EmbSettings().bm25,
        )
    finally:
        store.close() if settings.qdrant_url else close_embedded(settings)
    record_languages(_admin_session(), report)
    typer.echo(
        f"{report.updated} of {report.seen} chunks re-analyzed, "
        f"{len(report.document_langs)} documents' languages set"
    )


# -- nightly maintenance: tasks, runs, restore ---------------------------------------------


@maintenance_app.command("list")
def maintenance_list() -> None:
    """The maintenance tasks, their schedule (UTC cron) and each one's last run."""
    from haven.maintenance import platform_jobs
    from haven.maintenance_settings import MaintenanceSettings
    from workers.maintenance.schedule import effective_schedule
    from workers.maintenance.tasks import tasks

    known = tasks()
    schedule = effective_schedule(
        {t.name: t.cron for t in known.values()}, MaintenanceSettings().schedule
    )
    with _platform_transaction() as session:
        jobs = platform_jobs(session)
        for task in known.values():
            last = jobs.latest(task.name)
            ran = (
                f"last run {last.state.value} {(last.finished_at or last.created_at).isoformat()}"
                if last
                else "never run"
            )
            typer.echo(f"{task.name:<20} {schedule[task.name]:<16} {ran}  {task.description}")


@maintenance_app.command("run")
def maintenance_run(
    name: str,
    wait: Annotated[bool, typer.Option(help="wait for the run to end, print its report")] = False,
    here: Annotated[
        bool, typer.Option(help="run in this process, without a job or a worker")
    ] = False,
    timeout: Annotated[float, typer.Option(help="seconds --wait waits")] = 6 * 3600.0,
) -> None:
    """Run a maintenance task now: queue its job (as the schedule does) for a maintenance
    worker, or with --here run it in this process. While a run of the task is queued or
    running, that run is the one reported."""
    import json
    import time

    from workers.maintenance.tasks import tasks

    if name not in tasks():
        typer.echo(f"no maintenance task is named {name!r} (see haven maintenance list)", err=True)
        raise typer.Exit(2)
    if here:
        report = _run_here(name)
        typer.echo(json.dumps(report, indent=2, sort_keys=True, default=str))
        return
    from haven.db.tables import JobState
    from haven.jobs import TERMINAL
    from haven.maintenance import platform_jobs

    job_id = _queue(name, {})
    if not wait:
        return
    deadline = time.monotonic() + timeout
    while True:
        with _platform_transaction() as session:
            job = platform_jobs(session).get(job_id)
            assert job is not None
            state, result = job.state, dict(job.result or {})
            error = job.last_error_message
            done, total = job.progress_done, job.progress_total
        if state in TERMINAL:
            break
        if time.monotonic() > deadline:
            typer.echo(f"still {state.value} ({done}/{total}) after {timeout:g} s", err=True)
            raise typer.Exit(3)
        time.sleep(1.0)
    if state != JobState.READY:
        typer.echo(f"{name} ended {state.value}: {error}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(result, indent=2, sort_keys=True, default=str))


@maintenance_app.command("cancel")
def maintenance_cancel(job_id: uuid.UUID) -> None:
    """Cancel a maintenance run: a queued one at once, a running one at its next progress."""
    import redis as redis_lib

    from haven.jobs import signal_cancel
    from haven.maintenance import platform_jobs

    with _platform_transaction() as session:
        jobs = platform_jobs(session)
        if jobs.get(job_id) is None:
            typer.echo(f"no maintenance run {job_id}", err=True)
            raise typer.Exit(1)
        if not jobs.request_cancel(job_id):
            typer.echo(f"run {job_id} has already ended", err=True)
            raise typer.Exit(1)
        AuditLog(session, None, None).record(
            "maintenance.cancel",
            target_type="maintenance",
            target_id=None,
            tenant_id=None,
            job_id=str(job_id),
        )
    client = redis_lib.Redis.from_url(StoreSettings().redis_url)
    try:
        signal_cancel(client, job_id)
    finally:
        client.close()
    typer.echo(f"cancel requested for {job_id}")


def _logs_to_stderr() -> None:
    """Log lines go to stderr, so stdout carries only the command's report."""
    import sys

    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))


def _run_here(name: str, params: dict[str, Any] | None = None) -> dict[str, object]:
    """Run a maintenance task in this process, without a job or a worker (with the embedded
    store, only while Haven is stopped)."""
    from haven.queueing import create_celery
    from haven.vectors import close_embedded
    from workers.maintenance.handler import run_here
    from workers.runtime import WorkerRuntime
    from workers.settings import WorkerSettings

    _logs_to_stderr()
    settings = WorkerSettings()
    runtime = WorkerRuntime(settings=settings, celery=create_celery(settings))
    try:
        return run_here(
            runtime,
            name,
            params or {},
            progress=lambda done, total, label: typer.echo(f"  {label}: {done}/{total}", err=True),
        )
    finally:
        if not settings.qdrant_url:
            close_embedded(settings)


@app.command("restore")
def restore_backup(
    backup_id: Annotated[str, typer.Argument(help="the backup, e.g. 20261201T020000Z")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="only validate the manifest and every checksum")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="empty stores that are not empty first")
    ] = False,
    timeout: Annotated[float, typer.Option(help="seconds a re-index may take")] = 6 * 3600.0,
) -> None:
    """Restore a backup from the backup target (HAVEN_BACKUP_*) into empty stores, then
    verify it: row counts and checksums, objects, vector counts, the recorded queries' top-10.
    Stop Haven first (the API, the workers and beat). A backup without vectors is re-indexed
    by the workers (start them after the database and objects are back: this waits)."""
    import json

    from haven.backup.restore import (
        Stores,
        fail_interrupted_jobs,
        requeue_current_versions,
        restore,
    )
    from haven.backup.restore import (
        dry_run as validate,
    )
    from haven.backup.target import BackupError, make_target
    from haven.maintenance import PLATFORM_TENANT_ID
    from haven.maintenance_settings import BackupSettings
    from haven.storage import make_client
    from haven.vectors import close_embedded, make_index, make_qdrant

    _logs_to_stderr()
    settings = StoreSettings()
    backup = BackupSettings()

    def say(line: str) -> None:
        typer.echo(line, err=True)

    try:
        target = make_target(backup, settings)
        if dry_run:
            report = validate(target, backup_id, progress=say)
            typer.echo(json.dumps(report, indent=2, sort_keys=True))
            typer.echo(f"backup {backup_id} is whole: {report['files']} files match the manifest")
            return
        engine = make_engine(settings)
        store = make_qdrant(settings)
        stores = Stores(
            settings, backup, engine, make_client(settings), make_index(settings, store)
        )
        queued: list[uuid.UUID] = []
        interrupted = 0

        def reindex() -> int:
            nonlocal interrupted
            interrupted += fail_interrupted_jobs(engine, PLATFORM_TENANT_ID)
            queued.extend(_send_reindex(settings, requeue_current_versions(engine)))
            return len(queued)

        try:
            report = restore(stores, target, backup_id, force=force, reindex=reindex, progress=say)
            interrupted += fail_interrupted_jobs(engine, PLATFORM_TENANT_ID)
            report["interrupted_runs_failed"] = interrupted
            if queued:
                _await_reindex(settings, stores, engine, queued, timeout, report, say)
        finally:
            engine.dispose()
            store.close() if settings.qdrant_url else close_embedded(settings)
    except BackupError as exc:
        typer.echo(f"{exc.code}: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(json.dumps(report, indent=2, sort_keys=True))
    typer.echo(f"restored {backup_id} and verified it")


def _await_reindex(
    settings: StoreSettings,
    stores: Any,
    engine: Engine,
    queued: list[uuid.UUID],
    timeout: float,
    report: dict[str, Any],
    say: Callable[[str], None],
) -> None:
    """Wait for the workers to re-index the restored documents; on a Qdrant server, then
    check the points and the recorded queries."""
    from haven.backup.manifest import read_manifest
    from haven.backup.restore import verify_vectors
    from haven.backup.target import make_target
    from haven.maintenance_settings import BackupSettings
    from haven.vectors import close_embedded

    if settings.qdrant_url:
        say(f"waiting for the workers to re-index {len(queued)} documents")
    else:
        close_embedded(settings)  # the embedded store is Haven's from now on
        say(
            f"start Haven now (haven up, or the API and the workers): its workers re-index "
            f"{len(queued)} documents; waiting for them"
        )
    _wait_for_jobs(engine, queued, timeout)
    if settings.qdrant_url:
        manifest = read_manifest(make_target(BackupSettings(), settings), report["backup_id"])
        report["verification"].update(verify_vectors(stores, manifest))
    else:
        report["verification"]["vectors"] = (
            f"re-indexed {len(queued)} documents; the embedded store is the running Haven's: "
            "search to check"
        )


def _send_reindex(settings: StoreSettings, job_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    import redis as redis_lib

    from haven.queueing import INGEST_TASK, create_celery, send_job_once

    celery = create_celery(settings)
    client = redis_lib.Redis.from_url(settings.redis_url)
    try:
        for job_id in job_ids:
            send_job_once(
                celery,
                client,
                INGEST_TASK,
                str(job_id),
                expires_seconds=settings.task_expires_seconds,
                force=True,
            )
    finally:
        client.close()
    return job_ids


def _wait_for_jobs(engine: Engine, job_ids: list[uuid.UUID], timeout: float) -> None:
    import time

    from sqlalchemy import text

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            left = conn.execute(
                text(
                    "SELECT count(*) FROM jobs WHERE id = ANY(:ids) AND state IN ('queued', "
                    "'running')"
                ),
                {"ids": job_ids},
            ).scalar_one()
        if not left:
            return
        time.sleep(2.0)
    raise typer.Exit(3)


# -- re-index and clean-up (see haven/reindex.py, haven/cleanup.py) --------------------------


def _queue_task(name: str, params: dict[str, Any], *, here: bool) -> None:
    """Run ``name`` with ``params``: queued for a maintenance worker (where the embedded
    store is open), or with ``here`` in this process (with the embedded store, only while
    Haven is stopped)."""
    import json

    if here:
        report = _run_here(name, params)
        typer.echo(json.dumps(report, indent=2, sort_keys=True, default=str))
        return
    _queue(name, params)


def _queue(name: str, params: dict[str, Any]) -> uuid.UUID:
    """Queue a run of ``name`` (as the schedule does) for a maintenance worker; while a run of
    the task is queued or running, that run is the one answered. Its job id."""
    import redis as redis_lib

    from haven.maintenance import request_run, send_run
    from haven.maintenance_settings import MaintenanceSettings
    from haven.queueing import create_celery

    settings = StoreSettings()
    with _platform_transaction() as session:
        request = request_run(
            session,
            AuditLog(session, None, None),
            name,
            trigger="cli",
            max_attempts=MaintenanceSettings().max_attempts,
            params=params,
        )
        job_id = request.job.id
    client = redis_lib.Redis.from_url(settings.redis_url)
    try:
        if request.created:
            send_run(
                create_celery(settings),
                client,
                request.job,
                expires_seconds=settings.task_expires_seconds,
            )
            typer.echo(f"queued {name}: job {job_id} (haven maintenance list)")
        else:
            typer.echo(f"{name} is already {request.job.state.value}: job {job_id}")
    finally:
        client.close()
    return job_id


@maintenance_app.command("re-index")
def re_index(
    cancel: Annotated[bool, typer.Option("--cancel", help="stop the running build")] = False,
    rollback: Annotated[
        bool, typer.Option("--rollback", help="serve the previous collection again")
    ] = False,
    status: Annotated[bool, typer.Option("--status", help="show the index pointer")] = False,
    here: Annotated[
        bool, typer.Option(help="build in this process, without a job or a worker")
    ] = False,
) -> None:
    """Re-embed every chunk into a new collection with the embedding aliases' current
    models, gate it and switch (blue/green; see haven/reindex.py). --cancel, --rollback and
    --status only touch PostgreSQL and take effect while Haven runs (within
    HAVEN_INDEX_POINTER_CACHE_SECONDS)."""
    import json

    from haven.index_pointer import IndexPointers
    from haven.reindex import request_cancel
    from haven.reindex import rollback as roll_back

    if sum((cancel, rollback, status)) > 1:
        typer.echo("choose one of --cancel, --rollback, --status", err=True)
        raise typer.Exit(2)
    settings = StoreSettings()
    if not (status or cancel or rollback):
        _queue_task("reindex-check", {"force": True}, here=here)
        return
    engine = make_engine(settings)
    factory = make_session_factory(engine)
    try:
        if status:
            with transaction(factory) as session:
                pointer = IndexPointers(session, settings.qdrant_collection).read()
            typer.echo(json.dumps(pointer.to_json(), indent=2, default=str))
        elif cancel:
            pointer = request_cancel(factory, settings.qdrant_collection)
            building = pointer.building.collection if pointer.building else "?"
            typer.echo(f"canceling the re-index into {building}")
        else:
            pointer = roll_back(factory, settings.qdrant_collection)
            typer.echo(f"serving {pointer.live.collection} again ({pointer.live.models})")
    except DomainError as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()


@maintenance_app.command("cleanup")
def cleanup(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="report only")] = False,
    here: Annotated[
        bool, typer.Option(help="run in this process, without a job or a worker")
    ] = False,
) -> None:
    """Find orphans between the stores and remove them (rows whose object is gone are only
    reported); see haven/cleanup.py."""
    _queue_task("cleanup", {"dry_run": dry_run}, here=here)


if __name__ == "__main__":
    app()
