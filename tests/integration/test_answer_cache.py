"""The answer cache on a real Redis: keys that ignore spelling but not sources, and
invalidation by document."""

from __future__ import annotations

import asyncio
import uuid

import redis
import redis.asyncio as aredis

from haven.answer_cache import (
    AnswerCache,
    CachedAnswer,
    cache_key,
    chunk_hash,
    invalidate_documents,
)
from tests.fixtures.services import TEST_REDIS_URL


def answer(*document_ids: uuid.UUID) -> CachedAnswer:
    return CachedAnswer(
        text="Aisle twelve [1].",
        citations=[{"n": 1, "chunk_id": str(uuid.uuid4())}],
        usage={"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35},
        finish_reason="stop",
        document_ids=[str(d) for d in document_ids],
    )


def test_spelling_does_not_change_the_key_but_sources_model_and_tenant_do() -> None:
    tenant, other = uuid.uuid4(), uuid.uuid4()
    hashes = [chunk_hash(uuid.uuid4(), "copper wire in aisle twelve")]
    key = cache_key(tenant, "Where is the copper wire?", "chat:1", hashes)
    assert cache_key(tenant, "  where is the COPPER   wire ", "chat:1", hashes) == key
    assert cache_key(tenant, "Where is the copper wire?", "chat:2", hashes) != key
    assert cache_key(other, "Where is the copper wire?", "chat:1", hashes) != key
    assert cache_key(tenant, "Where is the copper wire?", "chat:1", [*hashes, "x"]) != key
    assert cache_key(tenant, "Where is the copper wire?", "chat:1", hashes, "history") != key
    assert cache_key(tenant, "Where is the copper?", "chat:1", hashes) != key


def test_every_generation_parameter_and_the_models_file_change_the_key() -> None:
    tenant, hashes = uuid.uuid4(), [chunk_hash(uuid.uuid4(), "copper wire in aisle twelve")]
    model = "tiny-llama/1/" + "a" * 64
    params = {"max_tokens": 10, "temperature": 0.2, "seed": 3}
    key = cache_key(tenant, "Where is the copper?", model, hashes, "h", params)
    # The same model file and parameters (an unset one is the same as None).
    assert (
        cache_key(tenant, "where is the copper", model, hashes, "h", {**params, "top_p": None})
        == key
    )
    for changed in (
        {"max_tokens": 11},
        {"temperature": 0.7},
        {"seed": 4},
        {"top_p": 0.9},
        {"stop": ["\n"]},
        {"presence_penalty": 0.5},
        {"frequency_penalty": 0.5},
    ):
        assert (
            cache_key(tenant, "Where is the copper?", model, hashes, "h", {**params, **changed})
            != key
        )
    # Another file behind the same name and version string is another model.
    other = "tiny-llama/1/" + "b" * 64
    assert cache_key(tenant, "Where is the copper?", other, hashes, "h", params) != key


def test_invalidating_a_cited_document_drops_only_its_answers() -> None:
    sync = redis.Redis.from_url(TEST_REDIS_URL)
    tenant = uuid.uuid4()
    cited, unrelated = uuid.uuid4(), uuid.uuid4()
    key_cited = cache_key(tenant, "q1", "m:1", ["a"])
    key_unrelated = cache_key(tenant, "q2", "m:1", ["b"])

    async def scenario() -> tuple[CachedAnswer | None, CachedAnswer | None]:
        client = aredis.Redis.from_url(TEST_REDIS_URL)
        cache = AnswerCache(client, ttl_seconds=60)
        await cache.put(key_cited, tenant, answer(cited, unrelated))
        await cache.put(key_unrelated, tenant, answer(unrelated))
        hit = await cache.get(key_cited)
        assert hit is not None and hit.text == "Aisle twelve [1]."
        assert 0 < sync.ttl(key_cited) <= 60
        dropped = invalidate_documents(sync, tenant, [cited])
        assert dropped == 1
        result = await cache.get(key_cited), await cache.get(key_unrelated)
        await client.aclose()
        return result

    after_cited, after_unrelated = asyncio.run(scenario())
    assert after_cited is None
    assert after_unrelated is not None
    # Another tenant's invalidation of the same document id touches nothing here.
    assert invalidate_documents(sync, uuid.uuid4(), [unrelated]) == 0
    assert sync.exists(key_unrelated)
    sync.close()


def test_invalidation_without_redis_does_not_fail_the_caller() -> None:
    down = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    assert invalidate_documents(down, uuid.uuid4(), [uuid.uuid4()]) == 0
