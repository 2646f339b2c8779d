"""More concurrent requests than database connections wait their turn; none fails.

Before the API held sessions under slots, the requests beyond the pool filled the thread
pool with threads blocked on the connection pool, while the connections waited for those
threads to commit and close: every request then failed after the pool timeout with a 500."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings
from tests.fixtures.api import bootstrap_platform_admin


def test_sixty_concurrent_writes_through_four_connections(
    store_overrides: dict[str, Any],
) -> None:
    settings = ApiSettings(
        **store_overrides, database_pool_size=1, database_max_overflow=3, database_pool_timeout=5
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        factory = client.app.state.runtime.session_factory  # type: ignore[attr-defined]
        admin = bootstrap_platform_admin(factory, client)

        def create(i: int) -> int:
            response = client.post("/api/v1/chats", json={"title": f"c{i}"}, headers=admin.headers)
            return response.status_code

        with ThreadPoolExecutor(60) as pool:
            statuses = list(pool.map(create, range(60)))
        assert statuses == [201] * 60
        listed = client.get("/api/v1/chats", params={"limit": 100}, headers=admin.headers)
        assert listed.json()["total"] == 60
