"""The vector store client: a Qdrant server when ``QDRANT_URL`` is set, otherwise
qdrant-client's embedded local mode in a folder. The same calls work on both.

Local mode allows one process per folder, which is why the embedded default runs the API and
the workers in one process (see ``api.allinone``).
"""

from __future__ import annotations

from qdrant_client import QdrantClient

from haven.settings import StoreSettings


def make_qdrant(settings: StoreSettings) -> QdrantClient:
    if settings.qdrant_url:
        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return QdrantClient(url=settings.qdrant_url, api_key=api_key, timeout=30)
    settings.qdrant_path.mkdir(parents=True, exist_ok=True)
    return QdrantClient(path=str(settings.qdrant_path))
