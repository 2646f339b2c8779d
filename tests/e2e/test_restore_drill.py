"""The restore drill: a corpus ingested through the real stack (emb and the all-in-one API +
worker as processes, PostgreSQL, a moto S3 endpoint, Qdrant Edge), backed up by a maintenance
job on the worker, every store wiped, restored with ``haven restore``, and compared: rows and
checksums, objects, vector counts, and the top-10 of 20 fixed queries in every search mode.
A corrupted backup file is refused by the dry run, which names the file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from minio import Minio

from haven.backup.objects import inventory
from haven.backup.postgres import table_digests
from haven.db.engine import make_engine, make_session_factory
from haven.settings import StoreSettings
from haven.storage import make_client
from haven.vectors import close_embedded, make_index, make_qdrant
from models.defaults import publish_default_embedding
from models.store import registry_from_settings
from tests.e2e.conftest import _env
from tests.fixtures.api import Account, bootstrap_platform_admin, create_tenant_with_admin
from tests.fixtures.processes import ROOT, ServiceProcess, python_module
from tests.fixtures.services import (
    TEST_BROKER_URL,
    TEST_REDIS_URL,
    create_database,
    drop_database,
    free_port,
    migrated_database,
)

# The first test also builds the module's stack: ingest, then a backup (minutes on a busy
# 2-core machine).
pytestmark = pytest.mark.timeout(1800)

TOPICS = {
    "glaciers": "Glaciers carve valleys as ice flows downhill under its own weight, scraping "
    "bedrock and carrying moraine far from the mountains where the snow first fell.",
    "bread": "Sourdough bread rises because wild yeast and lactic bacteria ferment the flour, "
    "releasing carbon dioxide that the gluten network traps inside the dough.",
    "tides": "Ocean tides follow the moon: its gravity pulls the water into two bulges, and the "
    "earth turning beneath them brings two high tides to most coasts each day.",
    "compilers": "A compiler parses source code into a syntax tree, checks its types, lowers "
    "it to an intermediate form and finally emits machine instructions for the processor.",
    "bees": "Honey bees dance to tell their sisters where flowers are: the angle of the waggle "
    "run points at the sun and its length says how far away the nectar lies.",
    "volcanoes": "Volcanoes erupt when magma rich in dissolved gas rises through the crust, the "
    "pressure dropping until the gas bursts out and throws ash high into the sky.",
    "chess": "In chess the opening develops the knights and bishops, the middle game fights "
    "for the centre, and the endgame turns a single extra pawn into a new queen.",
    "vaccines": "Vaccines train the immune system with a harmless piece of a pathogen so that "
    "memory cells recognise the real infection and stop it before it spreads.",
    "railways": "Early railways ran on wooden rails pulled by horses; steam locomotives later "
    "hauled coal and passengers across continents on standard gauge iron track.",
    "coffee": "Coffee beans are the roasted seeds of a cherry; roasting browns their sugars and "
    "builds the oils and aromas that hot water extracts in the cup.",
    "comets": "Comets are loose balls of ice and dust from the outer solar system that grow "
    "bright tails of gas when their orbits bring them close to the sun.",
    "printing": "The printing press used movable metal type set in a frame, inked and pressed "
    "onto paper, so that books could be copied by the hundred instead of by hand.",
}
QUERIES = [
    "how do glaciers move",
    "why does sourdough rise",
    "what causes two high tides a day",
    "compiler syntax tree and types",
    "bee waggle dance direction",
    "why do volcanoes erupt",
    "chess endgame pawn becomes queen",
    "how vaccines train immunity",
    "horses pulling early railways",
    "roasting coffee beans aroma",
    "comet tails near the sun",
    "movable type printing press",
    "moraine carried by ice",
    "wild yeast fermentation carbon dioxide",
    "moon gravity ocean bulge",
    "machine instructions emitted by compilers",
    "nectar flowers distance",
    "magma gas pressure ash",
    "memory cells recognise infection",
    "steam locomotives coal passengers",
]
MODES = ("dense", "lexical", "hybrid")
# The tables whose rows the backup's own run does not change (jobs and the audit log gain
# its rows after the backup's snapshot; those are compared with the manifest instead).
TABLES_THAT_MATTER = (
    "tenants",
    "users",
    "api_keys",
    "documents",
    "document_versions",
    "chunks",
    "uploads",
    "alembic_version",
)


def document_text(topic: str, sentence: str, copies: int = 14) -> bytes:
    """A few chunks' worth of text on one topic, each paragraph a little different."""
    paragraphs = [f"{topic.title()} notes, part {n}. {sentence}" for n in range(copies)]
    return "\n\n".join(paragraphs).encode()


@dataclass
class Drill:
    env: dict[str, str]
    settings: StoreSettings
    database: str
    tmp: Path
    api: ServiceProcess
    emb: ServiceProcess
    client: httpx.Client
    tenant: Account | None = None
    admin: Account | None = None
    backup_id: str = ""
    before: dict[str, Any] = field(default_factory=dict)

    def start_api(self) -> None:
        self.api.start(timeout=300)

    def search_all(self) -> dict[str, dict[str, list[str]]]:
        assert self.tenant is not None
        found: dict[str, dict[str, list[str]]] = {}
        for query in QUERIES:
            found[query] = {}
            for mode in MODES:
                response = self.client.post(
                    "/api/v1/search",
                    json={"query": query, "top_k": 10, "mode": mode},
                    headers=self.tenant.headers,
                )
                assert response.status_code == 200, response.text
                found[query][mode] = [r["chunk_id"] for r in response.json()["results"]]
        return found

    def haven(self, *args: str, folder: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.env}
        if folder is not None:
            env["HAVEN_BACKUP_FOLDER"] = str(folder)
        return subprocess.run(
            [sys.executable, "-m", "haven.cli", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )


def _wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _stores_now(drill: Drill) -> dict[str, Any]:
    """Rows and checksums, objects and points, read straight from the stores (Haven's API
    stopped: the embedded vector store is one process's at a time)."""
    engine = make_engine(drill.settings)
    try:
        with engine.connect() as conn, conn.begin():
            digests = table_digests(conn)
    finally:
        engine.dispose()
    objects = inventory(make_client(drill.settings), drill.settings.s3_bucket)
    store = make_qdrant(drill.settings)
    try:
        points = make_index(drill.settings, store).count()
    finally:
        close_embedded(drill.settings)
    return {"tables": digests, "objects": objects, "points": points}


@pytest.fixture(scope="module")
def drill(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drill]:
    tmp = tmp_path_factory.mktemp("drill")
    database = f"haven_drill_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    database_url = migrated_database(database)
    emb_port, api_port = free_port(), free_port()
    env = {
        **_env(database_url, s3_endpoint, tmp, emb_port, free_port()),
        "HAVEN_BACKUP_FOLDER": str(tmp / "backups"),
        "HAVEN_BEAT_SCHEDULE_PATH": str(tmp / "beat-schedule"),
        "HAVEN_MAINTENANCE_SCHEDULE": json.dumps(
            {"backup": "off", "backup-retention": "off", "stale-uploads": "off"}
        ),
        "HAVEN_BACKUP_VERIFY_QUERIES": json.dumps(QUERIES),
    }
    settings = StoreSettings(
        database_url=database_url,
        s3_endpoint=s3_endpoint,
        s3_bucket=env["HAVEN_S3_BUCKET"],
        models_bucket=env["HAVEN_MODELS_BUCKET"],
        redis_url=TEST_REDIS_URL,
        broker_url=TEST_BROKER_URL,
        qdrant_path=Path(env["HAVEN_QDRANT_PATH"]),
        qdrant_collection=env["HAVEN_QDRANT_COLLECTION"],
    )
    publish_default_embedding(registry_from_settings(settings))
    redis.Redis.from_url(TEST_REDIS_URL).flushdb()
    emb = ServiceProcess(
        "emb",
        python_module("uvicorn", "--factory", "emb.main:create_app", "--port", str(emb_port)),
        env,
        f"http://127.0.0.1:{emb_port}/readyz",
        tmp / "emb.log",
    ).start(timeout=300)
    api = ServiceProcess(
        "api",
        python_module("devstack.allinone", "--host", "127.0.0.1", "--port", str(api_port)),
        env,
        f"http://127.0.0.1:{api_port}/readyz",
        tmp / "api.log",
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=120)
    found = Drill(env, settings, database, tmp, api, emb, client)
    try:
        found.start_api()
        _ingest_and_back_up(found)
        yield found
    finally:
        client.close()
        api.stop()
        emb.stop()
        drop_database(database)


def _ingest_and_back_up(drill: Drill) -> None:
    engine = make_engine(drill.settings)
    try:
        drill.admin = admin = bootstrap_platform_admin(make_session_factory(engine), drill.client)
    finally:
        engine.dispose()
    drill.tenant = tenant = create_tenant_with_admin(drill.client, admin)
    for topic, sentence in TOPICS.items():
        response = drill.client.post(
            "/api/v1/documents",
            files={"file": (f"{topic}.txt", document_text(topic, sentence))},
            headers=tenant.headers,
        )
        assert response.status_code in (200, 201, 202), response.text

    def all_ready() -> bool:
        listed = drill.client.get(
            "/api/v1/documents", params={"limit": 200}, headers=tenant.headers
        ).json()
        states = [d["state"] for d in listed["items"]] if isinstance(listed, dict) else []
        assert "failed" not in states, listed
        return len(states) == len(TOPICS) and set(states) == {"ready"}

    _wait(all_ready, 300, "the corpus to be indexed")
    drill.before["top"] = drill.search_all()

    # The backup, as a maintenance job on the worker, asked for through the admin API.
    started = drill.client.post("/api/v1/admin/maintenance/backup/run", headers=admin.headers)
    assert started.status_code == 202, started.text
    job_id = started.json()["run"]["id"]

    def backup_run() -> dict[str, Any]:
        listed = drill.client.get("/api/v1/admin/maintenance", headers=admin.headers).json()
        run: dict[str, Any] = next(t for t in listed if t["name"] == "backup")["last_run"]
        assert run["id"] == job_id
        return run

    _wait(lambda: backup_run()["state"] in ("ready", "failed"), 600, "the backup")
    run = backup_run()
    assert run["state"] == "ready", run
    drill.backup_id = run["result"]["backup_id"]
    assert run["result"]["vectors_mode"] == "export"
    assert run["result"]["queries"] == len(QUERIES)

    drill.api.stop()  # the stores are read directly from here on
    drill.before["stores"] = _stores_now(drill)


def _report(stdout: str) -> dict[str, Any]:
    """The JSON report a command printed (after any log lines), indented from column 0."""
    start = 0 if stdout.startswith("{\n") else stdout.rindex("\n{\n") + 1
    end = stdout.index("\n}", start) + 2
    found: dict[str, Any] = json.loads(stdout[start:end])
    return found


def _lose_every_store(drill: Drill) -> None:
    """The database dropped (an empty one left to restore into), the bucket emptied and
    removed, the vector folder deleted, Redis flushed."""
    create_database(drill.database)
    s3: Minio = make_client(drill.settings)
    for listed in s3.list_objects(drill.settings.s3_bucket, recursive=True):
        s3.remove_object(drill.settings.s3_bucket, str(listed.object_name))
    s3.remove_bucket(drill.settings.s3_bucket)
    shutil.rmtree(drill.settings.qdrant_path)
    redis.Redis.from_url(TEST_REDIS_URL).flushdb()


def test_the_dry_run_refuses_a_corrupted_file_naming_it(drill: Drill) -> None:
    whole = drill.haven("restore", drill.backup_id, "--dry-run")
    assert whole.returncode == 0, whole.stderr
    assert f"backup {drill.backup_id} is whole" in whole.stdout

    # A copy of the backup with one object's bytes changed (same size).
    corrupt_root = drill.tmp / "corrupt"
    shutil.copytree(drill.tmp / "backups", corrupt_root)  # HAVEN_BACKUP_FOLDER's copy
    backup = corrupt_root / "backups" / drill.backup_id
    victim = sorted((backup / "objects").rglob("*"))[-1]
    assert victim.is_file()
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    named = victim.relative_to(backup).as_posix()

    refused = drill.haven("restore", drill.backup_id, "--dry-run", folder=corrupt_root)
    assert refused.returncode == 1
    assert "restore.checksum" in refused.stderr and named in refused.stderr, refused.stderr
    # A real restore from it is refused the same way, before touching any store.
    refused_again = drill.haven("restore", drill.backup_id, folder=corrupt_root)
    assert refused_again.returncode == 1 and named in refused_again.stderr

    # A manifest that is not JSON is refused by name too.
    (backup / "manifest.json").write_text("{not json")
    broken = drill.haven("restore", drill.backup_id, "--dry-run", folder=corrupt_root)
    assert broken.returncode == 1 and "manifest.json" in broken.stderr


def test_restore_drill_gives_back_identical_stores_and_search(drill: Drill) -> None:
    before = drill.before["stores"]
    assert before["points"] > 0 and before["objects"]

    # A restore into stores that are not empty is refused.
    occupied = drill.haven("restore", drill.backup_id)
    assert occupied.returncode == 1 and "restore.not_empty" in occupied.stderr

    _lose_every_store(drill)

    started = time.monotonic()
    restored = drill.haven("restore", drill.backup_id)
    seconds = time.monotonic() - started
    assert restored.returncode == 0, restored.stderr
    report = _report(restored.stdout)
    verification = report["verification"]
    assert verification["queries_checked"] == len(QUERIES)
    assert verification["top10_identical"] == len(QUERIES) * len(MODES)
    assert report["interrupted_runs_failed"] == 1  # the backup's own run, running in the dump

    after = _stores_now(drill)
    for table in TABLES_THAT_MATTER:
        assert after["tables"][table] == before["tables"][table], table
    assert after["objects"] == before["objects"]
    assert after["points"] == before["points"]
    chunks = before["tables"]["chunks"]["rows"]
    print(f"restore: {seconds:.1f} s for {chunks} chunks, {len(after['objects'])} objects")

    # Haven on the restored stores answers the 20 queries as before, in every mode.
    drill.start_api()
    assert drill.search_all() == drill.before["top"]


def test_a_backup_without_vectors_is_restored_by_re_indexing(drill: Drill) -> None:
    """The rebuild path: a backup taken without the vectors (here by the CLI in-process,
    Haven stopped) is restored by re-queuing every current version's ingest; Haven's workers
    rebuild the index from PostgreSQL and the objects, and search answers as before."""
    drill.api.stop()
    before = _stores_now(drill)
    taken = subprocess.run(
        [sys.executable, "-m", "haven.cli", "maintenance", "run", "backup", "--here"],
        cwd=ROOT,
        env={**os.environ, **drill.env, "HAVEN_BACKUP_VECTORS": "none"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert taken.returncode == 0, taken.stderr
    backup = _report(taken.stdout)
    assert backup["vectors_mode"] == "none" and backup["queries"] == len(QUERIES)

    _lose_every_store(drill)
    log = drill.tmp / "restore-reindex.log"
    with log.open("w") as err:
        restoring = subprocess.Popen(
            [sys.executable, "-m", "haven.cli", "restore", backup["backup_id"]],
            cwd=ROOT,
            env={**os.environ, **drill.env},
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        _wait(lambda: "start Haven now" in log.read_text(), 300, "the rows and objects")
        drill.start_api()  # its worker re-indexes
        out, _ = restoring.communicate(timeout=600)
    finally:
        if restoring.poll() is None:
            restoring.kill()
    assert restoring.returncode == 0, log.read_text()
    report = _report(out)
    assert report["reindex_queued"] == len(TOPICS)
    assert report["verification"]["objects"] == len(TOPICS)

    assert drill.search_all() == drill.before["top"]
    drill.api.stop()
    assert _stores_now(drill)["points"] == before["points"]
