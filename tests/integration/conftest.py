from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.main import create_app
from api.settings import ApiSettings
from tests.fixtures.api import Account, bootstrap_platform_admin, create_tenant_with_admin


@pytest.fixture()
def api_settings(store_overrides: dict[str, Any]) -> ApiSettings:
    return ApiSettings(**store_overrides)


@pytest.fixture()
def api_client(api_settings: ApiSettings) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture()
def session_factory(api_client: TestClient) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = api_client.app.state.runtime.session_factory  # type: ignore[attr-defined]
    return factory


@pytest.fixture()
def platform_admin(api_client: TestClient, session_factory: sessionmaker[Session]) -> Account:
    return bootstrap_platform_admin(session_factory, api_client)


@pytest.fixture()
def tenant_a(api_client: TestClient, platform_admin: Account) -> Account:
    return create_tenant_with_admin(api_client, platform_admin)


@pytest.fixture()
def tenant_b(api_client: TestClient, platform_admin: Account) -> Account:
    return create_tenant_with_admin(api_client, platform_admin)
