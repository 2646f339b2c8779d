"""Benchmark: how the all-in-one API + worker answers ``/healthz`` while it is fed hostile files.

Starts a moto S3 server, a fresh database, the emb service and the all-in-one process (as
``bench/ingest`` does) with the extraction limits below, then uploads, at the same time, the
hostile files of ``tests/fixtures/hostile_files`` (``--rounds`` times each) from one tenant and
SciFact abstracts from another. ``/healthz`` is polled every 0.5 s throughout; the script
reports its worst and typical latency, when each hostile file failed and with what reason, and
how long the other tenant's documents took.

    .venv/bin/python -m bench.hostile.run [--rounds 2] [--docs 20] [--no-record]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import tempfile
import threading
import time
import uuid
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.common import machine, record
from bench.extract_pool.run import corpus_files
from haven.db.engine import make_engine, make_session_factory
from haven.settings import StoreSettings
from models.defaults import publish_default_embedding
from models.store import registry_from_settings
from tests.fixtures.api import Account, bootstrap_platform_admin, create_tenant_with_admin
from tests.fixtures.hostile_files import (
    busy_pdf,
    docx_of_many_paragraphs,
    docx_with_large_part,
    many_pages_pdf,
    redos_markdown,
)
from tests.fixtures.processes import ServiceProcess, python_module
from tests.fixtures.services import (
    TEST_BROKER_URL,
    TEST_REDIS_URL,
    drop_database,
    free_port,
    migrated_database,
    start_moto,
)

LIMITS = {
    "HAVEN_EXTRACT_TIMEOUT_SECONDS": "20",
    "HAVEN_EXTRACT_MEMORY_MB": "700",
    "HAVEN_EXTRACT_MAX_PAGES": "1000",
    "HAVEN_EXTRACT_MAX_UNCOMPRESSED_MB": "64",
}


class Probe:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.latencies: list[float] = []
        self.failures = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=5) as client:
            while not self.stopped.is_set():
                started = time.perf_counter()
                try:
                    client.get("/healthz").raise_for_status()
                except httpx.HTTPError:
                    self.failures += 1
                self.latencies.append(time.perf_counter() - started)
                self.stopped.wait(0.5)


def hostile_files(work: Path) -> dict[str, tuple[bytes, str]]:
    return {
        "pages.pdf": (many_pages_pdf(1_000_000), "extract.too_large"),
        "bomb.docx": (
            docx_with_large_part(work / "bomb.docx", 300).read_bytes(),
            "extract.too_large",
        ),
        "greedy.docx": (
            docx_of_many_paragraphs(work / "greedy.docx", 60).read_bytes(),
            "extract.memory",
        ),
        "busy.pdf": (busy_pdf(pages=1000, blocks_per_page=100_000), "extract.timeout"),
        "brackets.md": (redos_markdown(30_000), "ready"),
    }


def distinct(name: str, content: bytes, round_: int) -> bytes:
    """The same file with a harmless difference per round, so the upload is not a duplicate."""
    if name.endswith(".pdf"):
        return content + b"%% round %d\n" % round_  # a comment after the end of the file
    if name.endswith(".docx"):
        buffer = io.BytesIO(content)
        with zipfile.ZipFile(buffer, "a") as archive:
            archive.comment = b"round %d" % round_
        return buffer.getvalue()
    return content + b"\nRound %d.\n" % round_


def wait_all(
    client: httpx.Client, who: Account, job_ids: dict[str, str], deadline: float
) -> dict[str, dict]:
    """The jobs' last state, once all have ended or at the deadline (still running then)."""
    last: dict[str, dict] = {}
    while True:
        for name, job_id in job_ids.items():
            if last.get(name, {}).get("state") not in ("ready", "failed", "canceled"):
                last[name] = client.get(f"/api/v1/jobs/{job_id}", headers=who.headers).json()
        ended = all(body["state"] in ("ready", "failed", "canceled") for body in last.values())
        if ended or time.monotonic() > deadline:
            return last
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--docs", type=int, default=20)
    parser.add_argument("--wait", type=float, default=600, help="seconds to wait for the jobs")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="haven-bench-hostile-"))
    moto = start_moto(work)
    s3 = next(moto)
    database_name = f"haven_bench_hostile_{os.getpid()}"
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
        "HAVEN_EMB_REPLICAS": "1",
        # Longer than the slowest extraction, so no job is handed to a second run.
        "HAVEN_JOB_LEASE_SECONDS": "90",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        **LIMITS,
    }
    settings = StoreSettings(
        database_url=database_url,
        s3_endpoint=s3,
        s3_bucket=env["HAVEN_S3_BUCKET"],
        models_bucket=env["HAVEN_MODELS_BUCKET"],
    )
    publish_default_embedding(registry_from_settings(settings))
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
    base_url = f"http://127.0.0.1:{api_port}"
    try:
        # Generous: on a shared machine loading the model can take minutes.
        emb.start(timeout=600)
        api.start(timeout=600)
        client = httpx.Client(base_url=base_url, timeout=120)
        admin = bootstrap_platform_admin(make_session_factory(engine), client)
        attacker = create_tenant_with_admin(client, admin)
        neighbour = create_tenant_with_admin(client, admin)
        hostile = hostile_files(work)
        normal = corpus_files(args.docs)
        probe = Probe(base_url)
        probe.thread.start()
        started = time.perf_counter()
        hostile_jobs: dict[str, str] = {}
        for round_ in range(args.rounds):
            for name, (content, _) in hostile.items():
                response = client.post(
                    "/api/v1/documents",
                    files={"file": (name, distinct(name, content, round_))},
                    data={"source_id": f"{name}-{round_}"},
                    headers=attacker.headers,
                )
                response.raise_for_status()
                hostile_jobs[f"{name} #{round_ + 1}"] = response.json()["job_id"]
        normal_jobs = {}
        for name, content in normal:
            response = client.post(
                "/api/v1/documents", files={"file": (name, content)}, headers=neighbour.headers
            )
            response.raise_for_status()
            normal_jobs[name] = response.json()["job_id"]
        deadline = time.monotonic() + args.wait
        normal_ended = wait_all(client, neighbour, normal_jobs, deadline)
        normal_seconds = time.perf_counter() - started
        hostile_ended = wait_all(client, attacker, hostile_jobs, deadline)
        hostile_seconds = time.perf_counter() - started
        probe.stopped.set()
        probe.thread.join()
        client.close()
    finally:
        api.stop()
        emb.stop()
        engine.dispose()
        drop_database(database_name)
        next(moto, None)
        shutil.rmtree(work, ignore_errors=True)

    latencies = sorted(probe.latencies)
    rows = []
    for name, body in hostile_ended.items():
        expected = hostile[name.split(" #")[0]][1]
        failed = body["state"] == "failed"
        outcome = str(body["last_error"])[:60] if failed else body["state"]
        took = "-"
        if body["finished_at"]:
            end = datetime.fromisoformat(body["finished_at"])
            took = f"{(end - datetime.fromisoformat(body['created_at'])).total_seconds():.1f}"
        ok = outcome.startswith(expected)
        rows.append(f"| {name} | {expected} | {outcome} | {body['attempts']} | {took} | {ok} |")
    not_ready = [f"{n} ({b['state']})" for n, b in normal_ended.items() if b["state"] != "ready"]
    report = "\n".join(
        [
            f"## hostile uploads vs /healthz — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            f"machine: {machine()}",
            f"load average at the end: {os.getloadavg()[0]:.1f} (the machine is shared)",
            f"command: `.venv/bin/python -m bench.hostile.run --rounds {args.rounds} "
            f"--docs {args.docs} --wait {args.wait:g}`",
            "- all-in-one API + worker, default concurrency and pool size, emb with one "
            "replica; limits: " + ", ".join(f"{k}={v}" for k, v in LIMITS.items()),
            f"- uploaded at once: {len(hostile_jobs)} hostile files from one tenant, "
            f"{len(normal_jobs)} SciFact abstracts from another",
            f"- **/healthz every 0.5 s: worst {1000 * latencies[-1]:.0f} ms**, median "
            f"{1000 * statistics.median(latencies):.0f} ms, p99 "
            f"{1000 * latencies[int(0.99 * (len(latencies) - 1))]:.0f} ms over "
            f"{len(latencies)} polls; {probe.failures} failed or timed out (5 s)",
            f"- the other tenant's {len(normal_jobs)} documents: waited {normal_seconds:.1f} s, "
            f"not ready: {', '.join(not_ready) or 'none'}; the hostile files: waited "
            f"{hostile_seconds:.1f} s",
            "",
            "| file | expected | outcome | attempts | upload → end (s) | as expected |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    record(report, save=not args.no_record)


if __name__ == "__main__":
    main()
