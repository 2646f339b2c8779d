"""The answer cache (Redis, ephemeral): a question asked again over the same passages, to the
same model with the same generation parameters, is answered at once from the stored answer.

Key: tenant + normalised question + the model's identity (manifest name, version and the
file's sha256: another file behind the same alias and version string is another model) +
every generation parameter (answer length, temperature, seed, ...: a truncated answer asked
for with ``max_tokens`` 10 is never served to a question asked without it) + the hashes of
the retrieved chunks that went into the prompt + the hash of the rest of the prompt (the
instructions and any conversation history, since a follow-up question means something else
in another conversation). Only the answer's text is kept: its citations and grounding are
worked out again from the passages of the request being answered. A new version of a
document changes its chunks' ids, so the key changes by itself; on top of that every entry is
listed under each document it cites, and re-ingesting or deleting a document drops those
entries at once (``invalidate_documents``), so no stale answer outlives its sources.

Losing Redis loses nothing but speed.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
import redis.asyncio as aredis
import structlog

log = structlog.get_logger("haven.answer_cache")

PREFIX = "haven:answer"
_SPACE = re.compile(r"\s+")
_TRAILING = re.compile(r"[\s?!.]+$")


def normalise_question(question: str) -> str:
    """Case, Unicode form, spacing and trailing punctuation do not change the question."""
    text = unicodedata.normalize("NFKC", question).casefold()
    return _TRAILING.sub("", _SPACE.sub(" ", text).strip())


def chunk_hash(chunk_id: uuid.UUID | str, text: str) -> str:
    return hashlib.sha256(f"{chunk_id}\0{text}".encode()).hexdigest()[:32]


def cache_key(
    tenant_id: uuid.UUID,
    question: str,
    model: str,
    chunk_hashes: Iterable[str],
    history_hash: str = "",
    generation: Mapping[str, Any] | None = None,
) -> str:
    """``model`` is the served model's identity; ``generation`` every parameter of the
    request that shapes the text (a missing key and a None value are the same)."""
    parameters = {k: v for k, v in (generation or {}).items() if v is not None}
    material = json.dumps(
        [
            str(tenant_id),
            normalise_question(question),
            model,
            list(chunk_hashes),
            history_hash,
            parameters,
        ],
        separators=(",", ":"),
        sort_keys=True,
    )
    return f"{PREFIX}:{tenant_id}:{hashlib.sha256(material.encode()).hexdigest()}"


def _document_set(tenant_id: uuid.UUID | str, document_id: uuid.UUID | str) -> str:
    return f"{PREFIX}-docs:{tenant_id}:{document_id}"


@dataclass(frozen=True)
class CachedAnswer:
    text: str
    usage: dict[str, Any]
    finish_reason: str
    document_ids: list[str] = field(default_factory=list)
    # Kept so that entries written by earlier releases still load; never served: citations
    # always come from the passages of the request being answered.
    citations: list[dict[str, Any]] = field(default_factory=list)

    def dumps(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def loads(cls, raw: bytes | str) -> CachedAnswer:
        return cls(**json.loads(raw))


class AnswerCache:
    def __init__(self, client: aredis.Redis, ttl_seconds: int) -> None:
        self.client = client
        self.ttl = ttl_seconds
        # Told of every lookup, hit or not (the API's cache hit ratio).
        self.on_lookup: Callable[[bool], None] | None = None

    async def get(self, key: str) -> CachedAnswer | None:
        raw = await self.client.get(key)
        if self.on_lookup is not None:
            self.on_lookup(raw is not None)
        return CachedAnswer.loads(raw) if raw is not None else None

    async def put(self, key: str, tenant_id: uuid.UUID, answer: CachedAnswer) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(key, answer.dumps(), ex=self.ttl)
            for document_id in answer.document_ids:
                members = _document_set(tenant_id, document_id)
                pipe.sadd(members, key)
                pipe.expire(members, self.ttl)
            await pipe.execute()


def invalidate_documents(
    client: redis.Redis, tenant_id: uuid.UUID | str, document_ids: Iterable[uuid.UUID | str]
) -> int:
    """Drop every cached answer that cites any of these documents; returns how many.

    Never raises: with Redis unreachable the entries still cannot be served for a new
    version (its chunk ids, hence the keys, differ) and they expire with their TTL."""
    dropped = 0
    try:
        for document_id in document_ids:
            members_key = _document_set(tenant_id, document_id)
            keys = client.smembers(members_key)
            if keys:
                dropped += int(client.delete(*keys))
            client.delete(members_key)
    except redis.RedisError as exc:
        log.warning("answer_cache.invalidate_failed", error=str(exc))
    return dropped


def forget_tenant(client: redis.Redis, tenant_id: uuid.UUID | str) -> int:
    """Drop every cached answer of a tenant (and its per-document lists); returns how many
    answers there were. The tenant's keys all start with its id, so one SCAN finds them."""
    answers = 0
    for pattern, counted in (
        (f"{PREFIX}:{tenant_id}:*", True),
        (f"{PREFIX}-docs:{tenant_id}:*", False),
    ):
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=500):
            batch.append(key)
            if len(batch) >= 500:
                deleted = int(client.delete(*batch))
                answers += deleted if counted else 0
                batch = []
        if batch:
            deleted = int(client.delete(*batch))
            answers += deleted if counted else 0
    return answers
