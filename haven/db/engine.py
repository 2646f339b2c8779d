"""Engine and session factory. The caller that opens a session owns its transaction:
the API request dependency, or a worker's task step. Repositories never commit."""

from __future__ import annotations

import select
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy
from sqlalchemy import Engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from haven.settings import StoreSettings


def make_engine(settings: StoreSettings) -> Engine:
    # Looked up on the module at each call: tracing (``haven.tracing``) wraps it there.
    engine = sqlalchemy.create_engine(
        settings.database_url.get_secret_value(),
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_timeout=settings.database_pool_timeout,
        future=True,
    )
    event.listen(engine, "checkout", refuse_closed_by_server)
    return engine


def refuse_closed_by_server(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """At checkout, drop a pooled connection the server has closed (PostgreSQL restarted,
    an idle timeout, ``pg_terminate_backend``): its idle socket then holds the server's
    goodbye or an end of file. One ``poll`` with no wait, where ``pool_pre_ping`` would
    spend a round trip on every transaction; the pool connects again on this error."""
    if dbapi_connection.closed:
        raise DisconnectionError("the connection is closed")
    readable, _, _ = select.select([dbapi_connection.fileno()], [], [], 0)
    if readable:
        raise DisconnectionError("the server closed the connection")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=True)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit when the block succeeds, roll back when it raises."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
