"""The embedding service's contracts (``emb``), used by emb and by its callers.

Two APIs: the OpenAI-compatible ``POST /v1/embeddings`` and the native ``POST /embed``,
which returns several dense vectors per text (one per requested alias) and optionally a
sparse lexical vector (see :mod:`haven.lexical`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class SparseVector(BaseModel):
    """Term weights keyed by stable 32-bit token ids, in Qdrant's sparse-vector shape."""

    indices: list[int]
    values: list[float]


class EmbedRequest(BaseModel):
    texts: list[str] = Field(min_length=1)
    # Aliases whose dense vectors to return; None means every alias the service serves.
    aliases: list[str] | None = None
    # "document" weights terms with BM25 saturation (for indexing), "query" weights each
    # distinct term 1 (for searching); None returns no sparse vector.
    sparse: Literal["document", "query"] | None = None
    # What the texts are, for models that embed queries and passages with a prefix of their
    # own (E5's "query: " / "passage: ", declared in the model's manifest); None: neither
    # prefix. Another model is not affected.
    input_type: Literal["query", "passage"] | None = None
    # alias -> model version (``name/version``) to embed with instead of what the alias
    # serves: the version the live (or the re-indexing) collection was built with, so
    # queries and documents match its vectors while the alias has moved on.
    pins: dict[str, str] | None = None


class WarmRequest(BaseModel):
    # Model versions (``name/version``) to download into the service's cache.
    models: list[str] = Field(min_length=1, max_length=32)


class EmbeddedText(BaseModel):
    index: int
    dense: dict[str, list[float]]
    sparse: SparseVector | None = None
    # Aliases whose window was shorter than the text; only the start of it was embedded.
    truncated: list[str] = []


class ServedModel(BaseModel):
    alias: str
    name: str
    version: str
    dimension: int
    max_seq_length: int
    # The languages the model's manifest declares it embeds well (ISO 639-1); empty when it
    # declares none (then it is trusted with every language).
    languages: list[str] = []
    query_prefix: str = ""
    passage_prefix: str = ""


class EmbedResponse(BaseModel):
    models: list[ServedModel]
    data: list[EmbeddedText]


class OpenAIEmbeddingRequest(BaseModel):
    input: str | list[str]
    model: str
    # The openai client asks for base64 unless told otherwise: little-endian float32.
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    # Not in OpenAI's schema: apply the model's query or passage prefix (see EmbedRequest).
    input_type: Literal["query", "passage"] | None = None


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage
    # Not in OpenAI's schema (clients ignore unknown fields): indexes of the input texts
    # that were longer than the model's window and were cut.
    truncated: list[int] = []
