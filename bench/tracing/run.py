"""Benchmark: API requests per second with tracing off and on, side by side.

One API process (``uvicorn api.main:create_app``) on a fresh database, started without
``HAVEN_OTEL_ENDPOINT`` and then with it (exporting to an OTLP/HTTP receiver in this script),
alternately ``--rounds`` times; each round sends ``--requests`` authenticated
``GET /api/v1/documents`` (a token check, one database transaction) from ``--clients``
concurrent clients. Reports the median requests/s of each mode, their ratio and the load
average, and appends them to ``bench/RESULTS.md``.

    .venv/bin/python -m bench.tracing.run [--requests 600] [--clients 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.common import machine, record
from haven.db.engine import make_engine, make_session_factory
from haven.settings import StoreSettings
from tests.fixtures.api import bootstrap_platform_admin
from tests.fixtures.otlp import OtlpReceiver
from tests.fixtures.processes import ServiceProcess, python_module
from tests.fixtures.services import (
    TEST_BROKER_URL,
    TEST_REDIS_URL,
    drop_database,
    free_port,
    migrated_database,
    start_moto,
)


def rate(base_url: str, token: str, requests: int, clients: int) -> float:
    headers = {"Authorization": f"Bearer {token}"}
    per_client = requests // clients

    def run() -> None:
        with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
            for _ in range(per_client):
                response = client.get("/api/v1/documents")
                assert response.status_code == 200, response.text

    with httpx.Client(base_url=base_url, headers=headers) as warm:
        for _ in range(20):
            warm.get("/api/v1/documents")
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(run) for _ in range(clients)]:
            future.result()
    return per_client * clients / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    name = f"haven_bench_tracing_{uuid.uuid4().hex[:8]}"
    database_url = migrated_database(name)
    tmp = Path(tempfile.mkdtemp(prefix="haven-bench-tracing-"))
    moto = start_moto(tmp)
    s3_endpoint = next(moto)
    receiver = OtlpReceiver(free_port()).start()
    engine = make_engine(StoreSettings(database_url=database_url))
    results: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for round_ in range(args.rounds):
            for mode in ("off", "on"):
                port = free_port()
                env = {
                    "HAVEN_ENV": "test",
                    "HAVEN_SECRETS_DIR": "/nonexistent-haven-secrets",
                    "HAVEN_DATABASE_URL": database_url,
                    "HAVEN_REDIS_URL": TEST_REDIS_URL,
                    "HAVEN_BROKER_URL": TEST_BROKER_URL,
                    "HAVEN_S3_ENDPOINT": s3_endpoint,
                    "HAVEN_QDRANT_PATH": str(tmp / f"qdrant-{round_}-{mode}"),
                    "HAVEN_LOG_LEVEL": "WARNING",
                }
                if mode == "on":
                    env["HAVEN_OTEL_ENDPOINT"] = receiver.endpoint
                api = ServiceProcess(
                    f"api-{mode}",
                    python_module(
                        "uvicorn",
                        "--factory",
                        "api.main:create_app",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--no-access-log",
                    ),
                    env,
                    f"http://127.0.0.1:{port}/healthz",
                    tmp / f"api-{mode}.log",
                ).start()
                try:
                    base_url = f"http://127.0.0.1:{port}"
                    with httpx.Client(base_url=base_url) as client:
                        token = bootstrap_platform_admin(make_session_factory(engine), client).token
                    value = rate(base_url, token, args.requests, args.clients)
                    results[mode].append(value)
                    print(f"round {round_ + 1} tracing {mode}: {value:.1f} requests/s", flush=True)
                finally:
                    api.stop()
    finally:
        receiver.stop()
        engine.dispose()
        drop_database(name)
        next(moto, None)

    load = os.getloadavg()
    off, on = statistics.median(results["off"]), statistics.median(results["on"])
    spans = len(receiver.spans)
    lines = [
        "",
        f"## tracing — requests/s with tracing off and on — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"machine: {machine()}, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
        " at the end (shared with other sessions: a loaded machine)",
        f"command: `.venv/bin/python -m bench.tracing.run --requests {args.requests} "
        f"--clients {args.clients} --rounds {args.rounds}`",
        f"- `GET /api/v1/documents` (token check + one transaction), {args.clients} clients, "
        f"one API process, rounds alternating off/on",
        f"- tracing off: {off:.1f} requests/s (rounds: "
        + ", ".join(f"{v:.1f}" for v in results["off"])
        + ")",
        f"- tracing on (OTLP/HTTP to a local receiver, {spans} spans received): {on:.1f} "
        "requests/s (rounds: " + ", ".join(f"{v:.1f}" for v in results["on"]) + ")",
        f"- on / off: **{on / off:.2f}**",
    ]
    record("\n".join(lines) + "\n", save=not args.no_record)


if __name__ == "__main__":
    main()
