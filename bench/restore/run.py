"""Benchmark: how long ``haven restore`` takes, per 10,000 chunks.

Starts a moto S3 server, a fresh database, the emb service and the all-in-one API + worker
(as ``haven up`` runs them), ingests ``--docs`` SciFact abstracts through the API, takes a
backup as a maintenance job (POST /api/v1/admin/maintenance/backup/run), stops Haven, wipes
every store (database, bucket, vector folder) and times ``haven restore`` into them, with the
restore's own split (PostgreSQL, objects, vectors, verification).

The corpus is small (a 2-core machine shared with other work ingests ~25 chunks/s); the time
per 10,000 chunks is the measured time scaled linearly by 10,000 / chunks. Every part of a
restore is linear in its size (pg_restore of the rows, one object copy per document, one
upsert per point, one checksum per row), apart from a fixed start-up cost that the linear
scaling overstates at this size: the result is an upper bound.

    HAVEN_BENCH_DATA=/work/shared/eval/scifact .venv/bin/python -m bench.restore.run [--docs 300]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.common import machine, record
from bench.ingest.run import corpus_files
from haven.db.engine import make_engine, make_session_factory
from haven.settings import StoreSettings
from haven.storage import make_client
from models.defaults import publish_default_embedding
from models.store import registry_from_settings
from tests.fixtures.api import bootstrap_platform_admin, create_tenant_with_admin
from tests.fixtures.processes import ROOT, ServiceProcess, python_module
from tests.fixtures.services import (
    TEST_BROKER_URL,
    TEST_REDIS_URL,
    create_database,
    drop_database,
    free_port,
    migrated_database,
    start_moto,
)


def _wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--upload-threads", type=int, default=4)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    files = corpus_files(args.docs)
    load_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="haven-bench-restore-"))
    moto = start_moto(work)
    s3_endpoint = next(moto)
    database = f"haven_bench_restore_{os.getpid()}"
    database_url = migrated_database(database)
    suffix = uuid.uuid4().hex[:8]
    emb_port, api_port = free_port(), free_port()
    env = {
        "HAVEN_ENV": "test",
        "HAVEN_SECRETS_DIR": "/nonexistent",
        "HAVEN_LOG_LEVEL": "WARNING",
        "HAVEN_DATABASE_URL": database_url,
        "HAVEN_REDIS_URL": TEST_REDIS_URL,
        "HAVEN_BROKER_URL": TEST_BROKER_URL,
        "HAVEN_S3_ENDPOINT": s3_endpoint,
        "HAVEN_S3_BUCKET": f"bench-{suffix}",
        "HAVEN_MODELS_BUCKET": f"models-{suffix}",
        "HAVEN_QDRANT_PATH": str(work / "qdrant"),
        "HAVEN_MODEL_CACHE_DIR": str(work / "models"),
        "HAVEN_EMB_URL": f"http://127.0.0.1:{emb_port}",
        "HAVEN_BACKUP_FOLDER": str(work / "backups"),
        "HAVEN_BEAT_SCHEDULE_PATH": str(work / "beat"),
        "HAVEN_MAINTENANCE_SCHEDULE": json.dumps(
            {"backup": "off", "backup-retention": "off", "stale-uploads": "off"}
        ),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    settings = StoreSettings(
        database_url=database_url,
        s3_endpoint=s3_endpoint,
        s3_bucket=env["HAVEN_S3_BUCKET"],
        models_bucket=env["HAVEN_MODELS_BUCKET"],
    )
    publish_default_embedding(registry_from_settings(settings))
    redis.Redis.from_url(TEST_REDIS_URL).flushdb()
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
        emb.start(timeout=300)
        api.start(timeout=300)
        client = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=120)
        admin = bootstrap_platform_admin(make_session_factory(engine), client)
        tenant = create_tenant_with_admin(client, admin)

        def send(item: tuple[str, bytes]) -> None:
            response = client.post(
                "/api/v1/documents", files={"file": item}, headers=tenant.headers
            )
            assert response.status_code in (200, 201, 202), response.text

        with ThreadPoolExecutor(args.upload_threads) as pool:
            list(pool.map(send, files))

        def ingested() -> bool:
            page = client.get(
                "/api/v1/documents",
                params={"limit": 1, "state": "ready"},
                headers=tenant.headers,
            ).json()
            return int(page["total"]) >= len(files)

        _wait(ingested, 3600, "the corpus to be ingested")
        started = client.post("/api/v1/admin/maintenance/backup/run", headers=admin.headers)
        assert started.status_code == 202, started.text
        job_id = started.json()["run"]["id"]

        def backup_run() -> dict[str, Any]:
            listed = client.get("/api/v1/admin/maintenance", headers=admin.headers).json()
            run: dict[str, Any] = next(t for t in listed if t["name"] == "backup")["last_run"]
            return run

        _wait(lambda: backup_run()["id"] == job_id and backup_run()["state"] != "running"
              and backup_run()["state"] != "queued", 3600, "the backup")  # fmt: skip
        run = backup_run()
        assert run["state"] == "ready", run
        backup = run["result"]
        client.close()
        api.stop()

        # Every store lost.
        create_database(database)
        s3 = make_client(settings)
        for listed in s3.list_objects(settings.s3_bucket, recursive=True):
            s3.remove_object(settings.s3_bucket, str(listed.object_name))
        s3.remove_bucket(settings.s3_bucket)
        shutil.rmtree(work / "qdrant")

        load_before = os.getloadavg()
        began = time.perf_counter()
        restored = subprocess.run(
            [sys.executable, "-m", "haven.cli", "restore", backup["backup_id"]],
            cwd=ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=7200,
        )
        wall = time.perf_counter() - began
        load_after = os.getloadavg()
        if restored.returncode != 0:
            raise SystemExit(restored.stderr)
        report = json.loads(restored.stdout[: restored.stdout.rindex("}") + 1])
    finally:
        api.stop()
        emb.stop()
        engine.dispose()
        drop_database(database)
        next(moto, None)
        shutil.rmtree(work, ignore_errors=True)

    chunks = int(backup["rows"]["chunks"])
    scale = 10_000 / chunks
    split = report["seconds"]
    lines = [
        f"## restore: haven restore per 10,000 chunks — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"- machine: {machine()}",
        f"- load average (1/5/15 min): at start {load_start[0]:.2f}/{load_start[1]:.2f}/"
        f"{load_start[2]:.2f}; before the restore {load_before[0]:.2f}/{load_before[1]:.2f}/"
        f"{load_before[2]:.2f}; after {load_after[0]:.2f}/{load_after[1]:.2f}/"
        f"{load_after[2]:.2f}",
        f"- corpus: {len(files)} SciFact abstracts → {chunks} chunks, {backup['objects']} "
        f"objects, {backup['bytes'] / 1e6:.1f} MB of backup files; 20 verify queries x 3 modes",
        "- command: `HAVEN_BENCH_DATA=/work/shared/eval/scifact .venv/bin/python -m "
        f"bench.restore.run --docs {args.docs}`",
        f"- `haven restore` wall time: {wall:.1f} s (validation of every sha256, PostgreSQL "
        f"{split['postgres']} s, objects {split['objects']} s, vectors {split['vectors']} s, "
        f"total inside the command {split['total']} s incl. verification)",
        f"- **per 10,000 chunks (scaled linearly x{scale:.1f}): {wall * scale:.0f} s** "
        f"(PostgreSQL {split['postgres'] * scale:.0f} s, objects {split['objects'] * scale:.0f}"
        f" s, vectors {split['vectors'] * scale:.0f} s)",
        "",
    ]
    text = "\n".join(lines)
    record(text, save=not args.no_record)


if __name__ == "__main__":
    main()
