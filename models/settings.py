"""Settings of anything that loads models: where the local cache lives and how patiently
to wait for the object store at start."""

from __future__ import annotations

from pathlib import Path

from haven.settings import StoreSettings


class ModelStoreSettings(StoreSettings):
    model_cache_dir: Path = Path("var/models")
    # Attempts to reach the object store at start, with exponential backoff between them
    # (0.5, 1, 2, 4 s by default): long enough to ride out MinIO starting next to us.
    model_store_attempts: int = 5
    model_store_backoff_seconds: float = 0.5
