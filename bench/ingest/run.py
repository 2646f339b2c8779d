"""Benchmark: SciFact ingested end to end through Haven's API, against raw in-process
embedding of the same chunks.

Starts a moto S3 server, a fresh database, the emb service and the all-in-one API + worker
process (as ``haven up`` runs them), uploads the 5,183 SciFact abstracts as Markdown files
through ``POST /api/v1/documents`` and waits until every document is ``ready``. Then, in this
process, it chunks the same files with the same chunker and tokenizer and times
``SentenceTransformer.encode(batch_size=32)`` over those chunks: the work the model alone
needs. Haven's overhead is everything between the two (upload, queueing, extraction,
chunking, HTTP to emb, Qdrant, PostgreSQL).

    .venv/bin/python -m bench.ingest.run [--docs 5183] [--upload-threads 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sentence_transformers import SentenceTransformer
from sqlalchemy import text
from transformers import AutoTokenizer

from bench.common import (
    CpuAccount,
    PeakRss,
    machine,
    own_cpu_seconds,
    pids_matching,
    record,
    tree_cpu_seconds,
)
from haven.db.engine import make_engine, make_session_factory
from haven.settings import StoreSettings
from models.defaults import publish_default_embedding
from models.loader import ModelCache
from models.store import registry_from_settings
from tests.fixtures.api import bootstrap_platform_admin, create_tenant_with_admin
from tests.fixtures.processes import ServiceProcess, python_module
from tests.fixtures.services import (
    TEST_BROKER_URL,
    TEST_REDIS_URL,
    drop_database,
    free_port,
    migrated_database,
    start_moto,
)
from workers.ingest.chunking import chunk_blocks
from workers.ingest.extract import ExtractLimits, extract
from workers.ingest.normalize import normalize_blocks
from workers.settings import WorkerSettings

# The shared evaluation data next to the checkout (/work/shared/eval), or HAVEN_BENCH_DATA.
CORPUS = (
    Path(
        os.environ.get(
            "HAVEN_BENCH_DATA", Path(__file__).resolve().parents[3] / "shared" / "eval" / "scifact"
        )
    )
    / "corpus.jsonl"
)


def corpus_files(limit: int) -> list[tuple[str, bytes]]:
    files = []
    with CORPUS.open(encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            files.append((f"{doc['_id']}.md", f"# {doc['title']}\n\n{doc['text']}\n".encode()))
            if len(files) >= limit:
                break
    return files


def raw_encode(folder: Path, texts: list[str]) -> tuple[float, float]:
    """Seconds and CPU seconds of sentence-transformers' own ``encode`` over ``texts``."""
    model = SentenceTransformer(str(folder), device="cpu")
    model.encode(texts[:64], batch_size=32)  # warm-up
    started, cpu_started = time.perf_counter(), time.process_time()
    model.encode(texts, batch_size=32)
    return time.perf_counter() - started, time.process_time() - cpu_started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=5183)
    parser.add_argument("--upload-threads", type=int, default=4)
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument(
        "--embedder",
        default="pytorch",
        help="the model emb serves: pytorch, onnx-fp32 or onnx-int8 (`haven models optimize`'s"
        " export, published and aliased like the command does); raw encode stays PyTorch",
    )
    args = parser.parse_args()

    files = corpus_files(args.docs)
    load_start = os.getloadavg()[0]
    emb_env = ", ".join(
        f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("HAVEN_EMB_")
    )
    work = Path(tempfile.mkdtemp(prefix="haven-bench-ingest-"))
    moto = start_moto(work)
    s3 = next(moto)
    database_name = f"haven_bench_{os.getpid()}"
    database_url = migrated_database(database_name)
    suffix = uuid.uuid4().hex[:8]
    emb_port, api_port = free_port(), free_port()
    env = {
        "HAVEN_ENV": "test",
        "HAVEN_SECRETS_DIR": "/nonexistent",
        "HAVEN_LOG_LEVEL": "WARNING",
        "HAVEN_DATABASE_URL": database_url,
        "HAVEN_REDIS_URL": TEST_REDIS_URL,
        "HAVEN_BROKER_URL": TEST_BROKER_URL,
        "HAVEN_S3_ENDPOINT": s3,
        "HAVEN_S3_BUCKET": f"bench-{suffix}",
        "HAVEN_MODELS_BUCKET": f"models-{suffix}",
        "HAVEN_QDRANT_PATH": str(work / "qdrant"),
        "HAVEN_MODEL_CACHE_DIR": str(work / "models"),
        "HAVEN_EMB_URL": f"http://127.0.0.1:{emb_port}",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    settings = StoreSettings(
        database_url=database_url,
        s3_endpoint=s3,
        s3_bucket=env["HAVEN_S3_BUCKET"],
        models_bucket=env["HAVEN_MODELS_BUCKET"],
    )
    registry = registry_from_settings(settings)
    pytorch = publish_default_embedding(registry)
    if args.embedder != "pytorch":
        from models import optimize

        if args.embedder not in ("onnx-fp32", "onnx-int8"):
            raise SystemExit(f"unknown --embedder {args.embedder!r}")
        exported = optimize.export(
            ModelCache(registry, work / "raw-models").fetch_version(pytorch).path,
            work / "export",
            quantize=optimize.QuantizeOptions() if args.embedder == "onnx-int8" else None,
        )
        registry.publish(
            exported.folder,
            name=pytorch.name,
            version=f"{pytorch.version}-{args.embedder}",
            type="embed",
            alias="minilm",
        )
    # The same chunks, computed here, and the model alone on them.
    worker = WorkerSettings()
    local = ModelCache(registry, work / "raw-models").fetch_version(pytorch)
    tokenizer = AutoTokenizer.from_pretrained(str(local.path))
    texts: list[str] = []
    for name, content in files:
        path = work / "raw" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)
        blocks = normalize_blocks(extract(path, "text/markdown", ExtractLimits()))
        texts += [
            c.text
            for c in chunk_blocks(
                blocks,
                tokenizer,
                max_tokens=worker.chunk_max_tokens,
                overlap_tokens=worker.chunk_overlap_tokens,
            )
        ]
    raw_before, raw_cpu = raw_encode(local.path, texts)
    print(f"raw PyTorch encode (before): {len(texts) / raw_before:.1f} chunks/s", flush=True)
    emb = ServiceProcess(
        "emb",
        python_module("uvicorn", "--factory", "emb.main:create_app", "--port", str(emb_port)),
        env,
        f"http://127.0.0.1:{emb_port}/readyz",
        work / "emb.log",
    )
    api = ServiceProcess(
        "api",
        python_module("devstack.allinone", "--port", str(api_port)),
        env,
        f"http://127.0.0.1:{api_port}/readyz",
        work / "api.log",
    )
    engine = make_engine(settings)
    try:
        emb.start()
        api.start()
        client = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=120)
        admin = bootstrap_platform_admin(make_session_factory(engine), client)
        owner = create_tenant_with_admin(client, admin)
        assert api.process is not None

        def send(item: tuple[str, bytes]) -> None:
            response = client.post("/api/v1/documents", files={"file": item}, headers=owner.headers)
            response.raise_for_status()

        assert emb.process is not None
        emb_pid, api_pid = emb.process.pid, api.process.pid
        moto_pids = pids_matching(f"moto.server -H 127.0.0.1 -p {s3.rsplit(':', 1)[1]}")
        servers = {
            "PostgreSQL": pids_matching("postgres -D"),
            "RabbitMQ": pids_matching("beam.smp"),
            "Redis": pids_matching("redis-server"),
        }
        roles: dict[str, Callable[[], float]] = {
            "emb model replicas": lambda: tree_cpu_seconds(emb_pid) - own_cpu_seconds(emb_pid),
            "emb HTTP (incl. sparse vectors)": lambda: own_cpu_seconds(emb_pid),
            "API + worker": lambda: tree_cpu_seconds(api_pid),
            "S3 (moto)": lambda: sum(tree_cpu_seconds(p) for p in moto_pids),
            **{
                name: (lambda pids=pids: sum(tree_cpu_seconds(p) for p in pids))
                for name, pids in servers.items()
            },
        }
        print(f"uploading {len(files)} documents; API + worker pid {api.process.pid}", flush=True)
        with PeakRss(api.process.pid) as rss, CpuAccount(roles) as cpu:
            started = time.perf_counter()
            with ThreadPoolExecutor(args.upload_threads) as pool:
                list(pool.map(send, files))
            uploaded = time.perf_counter() - started
            while True:
                page = client.get(
                    "/api/v1/documents",
                    params={"state": "ready", "limit": 1},
                    headers=owner.headers,
                ).json()
                failed = client.get(
                    "/api/v1/jobs", params={"state": "failed", "limit": 5}, headers=owner.headers
                ).json()
                if failed:
                    raise SystemExit(f"ingest failed: {failed[0]['last_error']}")
                if page["total"] >= len(files):
                    break
                time.sleep(1)
            elapsed = time.perf_counter() - started
        client.close()
    finally:
        api.stop()
        emb.stop()

    with engine.connect() as conn:
        chunks = int(conn.execute(text("SELECT count(*) FROM chunks")).scalar_one())
    engine.dispose()
    drop_database(database_name)
    # The model alone before and after the pipeline run; the ratio takes their mean, so
    # load from other work on the machine spreads over both sides.
    raw_after, _ = raw_encode(local.path, texts)
    raw_seconds = (raw_before + raw_after) / 2
    next(moto, None)
    shutil.rmtree(work, ignore_errors=True)

    raw_rate = len(texts) / raw_seconds
    e2e_rate = chunks / elapsed
    # With both cores busy the ratio is bounded by the model's share of all CPU spent, which
    # does not drift with the machine's speed the way wall times do.
    model_cpu = cpu.spent["emb model replicas"]
    outside = sum(v for role, v in cpu.spent.items() if role != "emb model replicas")
    report = "\n".join(
        [
            f"## ingest — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            f"machine: {machine()}",
            f"command: `.venv/bin/python -m bench.ingest.run --docs {args.docs}"
            f" --embedder {args.embedder}`; load average {load_start:.1f} at the start,"
            f" {os.getloadavg()[0]:.1f} at the end (shared machine)",
            f"- emb serves {args.embedder}"
            + (f" (emb settings from HAVEN_EMB_*: {emb_env})" if emb_env else ""),
            f"- documents: {len(files)} SciFact abstracts as Markdown, uploaded by "
            f"{args.upload_threads} clients in {uploaded:.1f} s",
            f"- end to end (first upload → all ready): {elapsed:.1f} s: "
            f"**{len(files) / elapsed:.1f} documents/s, {e2e_rate:.1f} chunks/s** "
            f"({chunks} chunks in PostgreSQL; {len(texts)} computed here)",
            f"- raw in-process PyTorch `encode(batch_size=32)` of the same chunks: "
            f"{raw_before:.1f} s before, {raw_after:.1f} s after: **{raw_rate:.1f} chunks/s**",
            f"- **ratio end-to-end/raw PyTorch: {e2e_rate / raw_rate:.2f}**"
            f" (goal ≥ {'0.8' if args.embedder == 'pytorch' else '1.3'})",
            f"- peak RSS of the API + worker process: {rss.peak_kb / 1024:.0f} MiB",
            f"- CPU from first upload to all ready: {cpu.summary()}",
            f"- the model's CPU: {model_cpu:.1f} s end to end, {raw_cpu:.1f} s raw; everything "
            f"else: {1000 * outside / len(files):.1f} ms per document; the model's share of "
            f"the CPU Haven used: **{model_cpu / (model_cpu + outside):.2f}**",
            "",
        ]
    )
    record(report, save=not args.no_record)


if __name__ == "__main__":
    main()
