"""Client of the embedding service (``emb``), for the workers (documents) and the API (queries)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import httpx

from haven.contracts.embeddings import EmbedRequest, EmbedResponse, ServedModel


class EmbeddingUnavailable(Exception):
    """emb is down, overloaded or timed out: worth retrying later."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EmbeddingRejected(Exception):
    """emb refused the request itself (4xx): retrying the same request will not help."""


def _raise_for(response: httpx.Response) -> None:
    if response.status_code in (429, 502, 503, 504):
        retry = response.headers.get("Retry-After")
        raise EmbeddingUnavailable(
            f"embedding service answered {response.status_code}",
            retry_after=float(retry) if retry and retry.replace(".", "", 1).isdigit() else None,
        )
    if response.status_code >= 400:
        raise EmbeddingRejected(
            f"embedding service answered {response.status_code}: {response.text[:300]}"
        )


class EmbClient:
    def __init__(self, base_url: str, *, timeout: float = 60.0) -> None:
        self._client = httpx.Client(base_url=base_url, timeout=timeout)

    def models(self) -> list[ServedModel]:
        try:
            response = self._client.get("/info")
        except httpx.HTTPError as exc:
            raise EmbeddingUnavailable(f"embedding service unreachable: {exc}") from exc
        _raise_for(response)
        return [ServedModel.model_validate(m) for m in response.json()["models"]]

    def embed(
        self,
        texts: Sequence[str],
        *,
        aliases: list[str] | None = None,
        sparse: Literal["document", "query"] | None = None,
        input_type: Literal["query", "passage"] | None = None,
        pins: dict[str, str] | None = None,
    ) -> EmbedResponse:
        body = EmbedRequest(
            texts=list(texts), aliases=aliases, sparse=sparse, input_type=input_type, pins=pins
        )
        try:
            response = self._client.post("/embed", json=body.model_dump())
        except httpx.HTTPError as exc:
            raise EmbeddingUnavailable(f"embedding service unreachable: {exc}") from exc
        _raise_for(response)
        return EmbedResponse.model_validate_json(response.content)

    def warm(self, models: list[str]) -> list[str]:
        """Have emb download these versions into its cache (``POST /warm``)."""
        try:
            response = self._client.post("/warm", json={"models": models})
        except httpx.HTTPError as exc:
            raise EmbeddingUnavailable(f"embedding service unreachable: {exc}") from exc
        _raise_for(response)
        return [str(ref) for ref in response.json()["cached"]]

    def close(self) -> None:
        self._client.close()


class AsyncEmbClient:
    """The same calls for the API's event loop (queries are embedded per request)."""

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self._client = httpx.AsyncClient(base_url=base_url, timeout=timeout)

    async def embed(
        self,
        texts: Sequence[str],
        *,
        aliases: list[str] | None = None,
        sparse: Literal["document", "query"] | None = None,
        input_type: Literal["query", "passage"] | None = None,
        pins: dict[str, str] | None = None,
    ) -> EmbedResponse:
        body = EmbedRequest(
            texts=list(texts), aliases=aliases, sparse=sparse, input_type=input_type, pins=pins
        )
        try:
            response = await self._client.post("/embed", json=body.model_dump())
        except httpx.HTTPError as exc:
            raise EmbeddingUnavailable(f"embedding service unreachable: {exc}") from exc
        _raise_for(response)
        return EmbedResponse.model_validate_json(response.content)

    async def aclose(self) -> None:
        await self._client.aclose()
