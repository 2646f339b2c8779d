"""The API's settings: the stores, the token keys, and the API's own limits."""

from __future__ import annotations

from haven.settings import AuthSettings, StoreSettings


class ApiSettings(StoreSettings, AuthSettings):
    readiness_timeout_seconds: float = 3.0
    cors_origins: list[str] = []
    max_upload_bytes: int = 100 * 1024 * 1024
    presign_ttl_seconds: int = 900
    download_ttl_seconds: int = 300
    emb_url: str = "http://127.0.0.1:8082"
    # The dense alias queries are embedded with (the index holds one vector per alias).
    search_alias: str = "minilm"
    search_candidates: int = 100
