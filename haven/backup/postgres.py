"""PostgreSQL in a backup: ``pg_dump -Fc`` of one snapshot, and the row counts and checksums of
every table read in that same snapshot, so a restore is compared with exactly what was dumped.

The client tools must be of the server's major version or newer (``pg_dump`` refuses a newer
server); the backup records both versions, and the service images install the client of the
deployment's server (``stack/Dockerfile``).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import make_url

from haven.backup.target import BackupError
from haven.db.tables import Base


def libpq(url: str) -> tuple[str, dict[str, str]]:
    """A SQLAlchemy URL as a libpq connection string, the password in ``PGPASSWORD`` (so it
    never shows in a process list)."""
    parsed = make_url(url)
    env = {"PGPASSWORD": parsed.password} if parsed.password else {}
    plain = parsed.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def client_major(tool: str) -> int:
    try:
        out = subprocess.run(  # noqa: S603 - the configured client tool, no shell
            [tool, "--version"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise BackupError("backup.pg_client", f"{tool} cannot run: {exc}", permanent=True) from exc
    found = re.search(r"(\d+)(?:\.\d+)?", out)
    if found is None:
        raise BackupError("backup.pg_client", f"{tool} --version said {out!r}", permanent=True)
    return int(found.group(1))


def server_major(conn: Connection) -> int:
    return int(conn.execute(text("SHOW server_version_num")).scalar_one()) // 10000


def check_client(tool: str, server: int) -> int:
    """The client's major version; refuses one older than the server."""
    client = client_major(tool)
    if client < server:
        raise BackupError(
            "backup.pg_version",
            f"{tool} is PostgreSQL {client} but the server is {server}: install the "
            f"{server} client (stack/Dockerfile does)",
            permanent=True,
        )
    return client


def tables() -> list[str]:
    """The tables Haven owns, parents first."""
    return [table.name for table in Base.metadata.sorted_tables]


def table_digests(conn: Connection) -> dict[str, dict[str, Any]]:
    """Per table: its rows and a sha256 of every row's text, in a fixed order. Read in UTC so
    timestamps print the same after a restore."""
    conn.execute(text("SET LOCAL TIME ZONE 'UTC'"))
    digests: dict[str, dict[str, Any]] = {}
    for name in [*tables(), "alembic_version"]:
        row = conn.execute(
            text(
                f"SELECT count(*), encode(sha256(convert_to(coalesce(string_agg(t::text, E'\\n' "  # noqa: S608 - our table names
                f"ORDER BY t::text), ''), 'UTF8')), 'hex') FROM \"{name}\" t"
            )
        ).one()
        digests[name] = {"rows": int(row[0]), "sha256": str(row[1])}
    return digests


def schema_revision(conn: Connection) -> str | None:
    found = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return ",".join(sorted(found)) or None


@contextmanager
def snapshot(engine: Engine) -> Iterator[tuple[Connection, str]]:
    """A repeatable-read transaction and its exported snapshot id, held while the caller
    dumps (``pg_dump --snapshot``) and reads the checksums."""
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            snapshot_id = str(conn.execute(text("SELECT pg_export_snapshot()")).scalar_one())
            yield conn, snapshot_id


@contextmanager
def dump_stream(url: str, snapshot_id: str, pg_dump: str) -> Iterator[IO[bytes]]:
    """``pg_dump -Fc`` of the snapshot, as a stream; raises when pg_dump fails."""
    dsn, env = libpq(url)
    proc = subprocess.Popen(  # noqa: S603 - the configured client tool, no shell
        [pg_dump, "-Fc", "--no-owner", "--no-privileges", f"--snapshot={snapshot_id}", "-d", dsn],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
    )
    assert proc.stdout is not None
    try:
        yield proc.stdout
    finally:
        proc.stdout.close()
        _, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise BackupError(
            "backup.pg_dump",
            f"pg_dump failed ({proc.returncode}): {err.decode(errors='replace')[-300:]}",
        )


def is_empty(conn: Connection) -> bool:
    """No table in the ``public`` schema."""
    return not conn.execute(
        text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
    ).scalar_one()


def wipe(conn: Connection) -> None:
    """Everything in ``public`` goes (``haven restore --force``)."""
    conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
    conn.execute(text("CREATE SCHEMA public"))


def restore_dump(url: str, dump: Path, pg_restore: str) -> None:
    dsn, env = libpq(url)
    result = subprocess.run(  # noqa: S603 - the configured client tool, no shell
        [
            pg_restore,
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            "--single-transaction",
            "-d",
            dsn,
            str(dump),
        ],
        capture_output=True,
        env={**os.environ, **env},
        timeout=6 * 3600,
    )
    if result.returncode != 0:
        raise BackupError(
            "restore.pg_restore",
            f"pg_restore failed ({result.returncode}): "
            f"{result.stderr.decode(errors='replace')[-500:]}",
        )
