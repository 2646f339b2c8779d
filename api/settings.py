"""The API's settings: the stores, the token keys, and the API's own limits."""

from __future__ import annotations

from haven.settings import AuthSettings, StoreSettings


class ApiSettings(StoreSettings, AuthSettings):
    readiness_timeout_seconds: float = 3.0
    cors_origins: list[str] = []
