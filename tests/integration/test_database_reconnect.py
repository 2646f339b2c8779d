"""A pooled connection the server closed (PostgreSQL restarted, an idle timeout, an admin's
``pg_terminate_backend``) is replaced at checkout: the next request or job step works
instead of failing on a dead socket."""

from __future__ import annotations

from typing import Any

import psycopg
from sqlalchemy import text

from haven.db.engine import make_engine, make_session_factory, transaction
from haven.settings import StoreSettings


def backend_pid(factory: Any) -> int:
    with transaction(factory) as session:
        return int(session.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_connection_the_server_closed_is_replaced_at_checkout(
    store_overrides: dict[str, Any], database_url: str
) -> None:
    settings = StoreSettings(**store_overrides, database_pool_size=1, database_max_overflow=0)
    engine = make_engine(settings)
    factory = make_session_factory(engine)
    try:
        first = backend_pid(factory)
        assert backend_pid(factory) == first  # the pool hands back the same connection
        with psycopg.connect(
            database_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
        ) as admin:
            # Waits (up to 5 s) until the backend is gone, as after a restart.
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", [first])
        # The transaction after the server dropped the pooled connection still works.
        second = backend_pid(factory)
        assert second != first
    finally:
        engine.dispose()
