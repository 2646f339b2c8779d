"""The chunk index and search behave the same on both vector stores: Qdrant Edge (the
embedded default) and qdrant-client (a Qdrant server in production; its local mode here, which
takes the same requests, since no server runs in the tests)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from qdrant_client import QdrantClient

from haven.index import ChunkIndex, IndexedChunk, SparseVector, chunk_id
from haven.search import QueryVectors, SearchFilters, SearchParams, search
from haven.vectorstore import EdgeStore, ServerStore

DAY = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture(params=["edge", "qdrant-client"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChunkIndex]:
    if request.param == "edge":
        edge = EdgeStore(tmp_path / "edge")
        yield ChunkIndex(edge, "chunks")
        edge.close()
    else:
        client = QdrantClient(path=str(tmp_path / "local"))
        yield ChunkIndex(ServerStore(client, kind="local"), "chunks")
        client.close()


def put(
    index: ChunkIndex,
    tenant: uuid.UUID,
    document: uuid.UUID,
    texts: list[str],
    *,
    version: int = 1,
    tags: list[str] | None = None,
    updated: datetime = DAY,
    activate: bool = True,
    lang: str = "und",
) -> list[uuid.UUID]:
    """Chunks whose dense vector points along their position and whose lexical terms are
    their words' lengths (a stand-in for term ids)."""
    version_id = uuid.uuid5(document, str(version))
    ids = [chunk_id(document, version, p) for p in range(len(texts))]
    index.upsert(
        IndexedChunk(
            cid,
            {"a": [1.0, float(p), float(len(text)), 0.5]},
            lengths(text),
            {
                "tenant_id": str(tenant),
                "document_id": str(document),
                "version_id": str(version_id),
                "version": version,
                "tags": tags or [],
                "mime": "text/plain",
                "lang": lang,
                "updated_at": updated.isoformat(),
                "text": text,
            },
        )
        for p, (cid, text) in enumerate(zip(ids, texts, strict=True))
    )
    if activate:
        index.activate_version(ids, [])
    return ids


def lengths(text: str) -> SparseVector:
    terms = sorted({len(word) for word in text.split()})
    return SparseVector(terms, [1.0] * len(terms))


def query(dense: list[float], terms: list[int]) -> QueryVectors:
    return QueryVectors("a", dense, SparseVector(terms, [1.0] * len(terms)))


def test_search_sees_only_the_tenants_active_chunks_in_every_mode(index: ChunkIndex) -> None:
    index.ensure({"a": 4})
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    document = uuid.uuid4()
    ids = put(index, mine, document, ["alpha beta", "gamma delta epsilon", "zeta"])
    put(index, theirs, uuid.uuid4(), ["alpha beta", "gamma delta epsilon"])
    put(index, mine, uuid.uuid4(), ["alpha beta unfinished"], activate=False)
    # Terms 5 and 7: the second chunk holds both, the first only 5 (no tie in either channel).
    vectors = query([1.0, 1.0, 18.0, 0.5], [5, 7])
    for mode in ("dense", "lexical", "hybrid"):
        outcome = search(index, mine, vectors, SearchParams(mode=mode))  # type: ignore[arg-type]
        assert {h.payload["tenant_id"] for h in outcome.hits} == {str(mine)}, mode
        assert {h.chunk_id for h in outcome.hits} <= set(ids), mode
    hybrid = search(index, mine, vectors, SearchParams(mode="hybrid"))
    assert hybrid.hits[0].chunk_id == ids[1]  # nearest and sharing the most terms
    assert hybrid.hits[0].dense_rank == 1 and hybrid.hits[0].lexical_rank == 1
    assert index.count(mine) == 4 and index.count(mine, active_only=True) == 3
    assert index.existing_ids([ids[0], uuid.uuid4()]) == {ids[0]}


def test_filters_fusions_and_mmr(index: ChunkIndex) -> None:
    index.ensure({"a": 4})
    tenant = uuid.uuid4()
    hr, legal = uuid.uuid4(), uuid.uuid4()
    put(index, tenant, hr, ["leave policy", "leave days"], tags=["hr"])
    put(
        index,
        tenant,
        legal,
        ["contract terms", "contract leave"],
        tags=["legal"],
        updated=DAY + timedelta(days=30),
    )
    vectors = query([1.0, 0.0, 12.0, 0.5], [5])

    def docs(params: SearchParams) -> set[str]:
        return {str(h.payload["document_id"]) for h in search(index, tenant, vectors, params).hits}

    assert docs(SearchParams(filters=SearchFilters(tags=["hr"]))) == {str(hr)}
    assert docs(SearchParams(filters=SearchFilters(document_ids=[legal]))) == {str(legal)}
    later = SearchFilters(updated_from=DAY + timedelta(days=1))
    assert docs(SearchParams(filters=later)) == {str(legal)}
    assert docs(SearchParams(filters=SearchFilters(mime=["application/pdf"]))) == set()
    for params in (
        SearchParams(fusion="dbsf"),
        SearchParams(mmr=True, mmr_lambda=0.7),
        SearchParams(mode="dense", mmr=True),
    ):
        assert docs(params) == {str(hr), str(legal)}
    # MMR with all weight on relevance is the plain ranking.
    plain = search(index, tenant, vectors, SearchParams(mode="dense")).hits
    relevant = search(index, tenant, vectors, SearchParams(mode="dense", mmr=True, mmr_lambda=1.0))
    assert [h.chunk_id for h in relevant.hits] == [h.chunk_id for h in plain]


def test_activation_replaces_a_version_and_deletes_reach_only_their_tenant(
    index: ChunkIndex,
) -> None:
    index.ensure({"a": 4})
    tenant, other = uuid.uuid4(), uuid.uuid4()
    document = uuid.uuid4()
    old = put(index, tenant, document, ["first edition", "more"])
    new = put(index, tenant, document, ["second edition"], version=2, activate=False)
    put(index, other, uuid.uuid4(), ["first edition"])
    vectors = query([1.0, 0.0, 13.0, 0.5], [5, 7])
    assert {h.chunk_id for h in search(index, tenant, vectors, SearchParams()).hits} == set(old)
    index.activate_version(new, old)
    assert {h.chunk_id for h in search(index, tenant, vectors, SearchParams()).hits} == set(new)
    assert index.count(tenant) == 1

    # Another tenant's ids do nothing.
    index.delete_document(other, document)
    assert index.count(tenant) == 1
    index.delete_version(tenant, uuid.uuid5(document, "2"))
    assert index.count(tenant) == 0
    put(index, tenant, uuid.uuid4(), ["kept until the purge"])
    index.delete_tenant(tenant)
    assert index.count(tenant) == 0
    assert index.count(other) == 1


def test_search_before_anything_is_indexed_says_so(index: ChunkIndex) -> None:
    outcome = search(index, uuid.uuid4(), query([1.0, 0.0, 1.0, 0.0], [1]), SearchParams())
    assert (outcome.hits, outcome.reason) == ([], "nothing has been indexed yet")
    assert index.count() == 0
    index.delete_document(uuid.uuid4(), uuid.uuid4())  # nothing to delete is not an error


def test_a_new_embedding_alias_needs_a_reindex(index: ChunkIndex) -> None:
    index.ensure({"a": 4})
    index.ensure({"a": 4})
    with pytest.raises(RuntimeError, match="re-index"):
        index.ensure({"a": 4, "b": 8})


def test_the_lang_filter_returns_only_chunks_in_those_languages(index: ChunkIndex) -> None:
    index.ensure({"a": 4})
    tenant = uuid.uuid4()
    ru, en = uuid.uuid4(), uuid.uuid4()
    put(index, tenant, ru, ["отпуск длится", "заявление подаётся"], lang="ru")
    put(index, tenant, en, ["leave lasts", "request is filed"], lang="en")
    vectors = query([1.0, 0.0, 12.0, 0.5], [5, 6, 7, 8, 9])
    for mode in ("dense", "lexical", "hybrid"):
        for lang, document in (("ru", ru), ("en", en)):
            params = SearchParams(mode=mode, filters=SearchFilters(lang=[lang]))  # type: ignore[arg-type]
            hits = search(index, tenant, vectors, params).hits
            assert hits and {h.payload["lang"] for h in hits} == {lang}, (mode, lang)
            assert {h.payload["document_id"] for h in hits} == {str(document)}
    both = SearchParams(filters=SearchFilters(lang=["ru", "en"]))
    assert len(search(index, tenant, vectors, both).hits) == 4
    assert (
        search(index, tenant, vectors, SearchParams(filters=SearchFilters(lang=["de"]))).hits == []
    )


def test_a_query_the_dense_model_does_not_understand_is_ranked_lexically(
    index: ChunkIndex,
) -> None:
    index.ensure({"a": 4})
    tenant = uuid.uuid4()
    ids = put(index, tenant, uuid.uuid4(), ["aa bbbbbbb", "cc dddd", "eeeee"], lang="ru")
    # Dense points at the second chunk, the lexical term (length 7) only matches the first.
    vectors = query([1.0, 1.0, 7.0, 0.5], [7])
    english_model = SearchParams(query_lang="ru", dense_languages=("en",))
    outcome = search(index, tenant, vectors, english_model)
    assert outcome.channels == ("lexical",) and outcome.query_lang == "ru"
    assert [h.chunk_id for h in outcome.hits] == [ids[0]]
    assert outcome.hits[0].dense_rank is None and outcome.hits[0].lexical_rank == 1

    multilingual = search(
        index, tenant, vectors, SearchParams(query_lang="ru", dense_languages=("en", "ru"))
    )
    assert multilingual.channels == ("dense", "lexical")
    assert multilingual.hits[0].dense_rank is not None
    # A model that declares nothing, or a query whose language is not known, keeps both.
    assert search(index, tenant, vectors, SearchParams(query_lang="ru")).channels == (
        "dense",
        "lexical",
    )
    undetermined = SearchParams(query_lang="und", dense_languages=("en",))
    assert search(index, tenant, vectors, undetermined).channels == ("dense", "lexical")
    # Without lexical terms the dense channel is all there is: kept, whatever the language.
    no_terms = search(index, tenant, query([1.0, 1.0, 7.0, 0.5], []), english_model)
    assert no_terms.channels == ("dense",) and no_terms.hits
    # Asked for dense, a search is dense.
    dense = SearchParams(mode="dense", query_lang="ru", dense_languages=("en",))
    assert search(index, tenant, vectors, dense).channels == ("dense",)


def test_chunks_of_an_earlier_analyzer_are_re_analyzed_in_place(index: ChunkIndex) -> None:
    from haven import lexical
    from haven.language import Detector
    from haven.relex import relex_index

    index.ensure({"a": 4})
    tenant, document = uuid.uuid4(), uuid.uuid4()
    texts = [
        "Заявление на ежегодный отпуск подаётся через портал за 14 дней.",
        "Meals are reimbursed up to 60 dollars.",
    ]
    ids = [chunk_id(document, 1, p) for p in range(2)]
    # As indexed by the English-only analyzer: Russian words unstemmed, no language.
    for p, (cid, text) in enumerate(zip(ids, texts, strict=True)):
        old = sorted({lexical.token_id(w.lower().strip(".")) for w in text.split()})
        index.upsert(
            [
                IndexedChunk(
                    cid,
                    {"a": [1.0, float(p), 3.0, 0.5]},
                    SparseVector(old, [1.0] * len(old)),
                    {
                        "tenant_id": str(tenant),
                        "document_id": str(document),
                        "lang": "und",
                        "text": text,
                    },
                )
            ]
        )
    index.activate_version(ids, [])
    question = lexical.query_vector("ежегодные заявления")
    vectors = QueryVectors(
        "a", [1.0, 0.0, 3.0, 0.5], SparseVector(question.indices, question.values)
    )
    lexical_only = SearchParams(mode="lexical")
    assert search(index, tenant, vectors, lexical_only).hits == []

    report = relex_index(index, Detector(["en", "ru"]), lexical.BM25(), batch=1)
    assert (report.seen, report.updated) == (2, 2)
    assert report.chunk_langs == {ids[0]: "ru", ids[1]: "en"}
    assert report.document_langs == {document: "ru"}  # the longer text
    hits = search(index, tenant, vectors, lexical_only).hits
    assert [h.chunk_id for h in hits] == [ids[0]]
    assert hits[0].payload["lang"] == "ru"
    assert hits[0].payload["analyzer"] == lexical.ANALYZER_ID
    # The dense vectors are kept, and a second run finds nothing to do.
    assert search(index, tenant, vectors, SearchParams(mode="dense")).hits[0].chunk_id == ids[0]
    again = relex_index(index, Detector(["en", "ru"]), lexical.BM25())
    assert (again.seen, again.updated) == (2, 0)
