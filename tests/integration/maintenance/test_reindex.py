"""Blue/green re-index on real PostgreSQL, Redis, an S3 endpoint, Qdrant Edge and a real emb
service serving two tiny sentence-transformers models of different dimensions (32 and 48)
published through the registry.

Search clients query the API without pause while the embedding alias moves from one model to
the other and the re-index runs: no query fails or comes back empty, the switch brings the new
model's results, a rollback is one switch back, a cancel leaves the old index serving with no
partial collection, and a document uploaded during the build is found after the switch."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from haven.cli import app
from haven.db.engine import transaction
from haven.errors import Invalid
from haven.index_pointer import IndexPointers
from haven.reindex import request_cancel
from models.registry import ModelRegistry
from tests.fixtures.maintenance_stack import ALIAS, Haven
from tests.fixtures.tiny_st import build_tiny_sentence_transformer
from workers.jobs.heartbeat import JobCanceled
from workers.maintenance.reindex import reindex_check
from workers.maintenance.warmup import warmup

OLD, NEW = "tiny-a@1", "tiny-b@1"
TOPICS = [
    "vacation days are counted per calendar year",
    "the kitchen fridge is emptied every friday",
    "parking permits are renewed in january",
    "laptops are replaced every four years",
    "the library closes at nine in the evening",
    "travel expenses are refunded within a month",
]
QUERIES = ["vacation days", "kitchen fridge", "parking permits", "laptops replaced", "library"]


class Searchers:
    """Clients querying the API without pause, counting failed and empty answers."""

    def __init__(self, haven: Haven, threads: int = 2) -> None:
        self.haven = haven
        self.stop = threading.Event()
        self.failed: list[str] = []
        self.empty: list[str] = []
        self.answered = 0
        self.models: list[set[str]] = []
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, offset: int) -> None:
        i = offset
        while not self.stop.is_set():
            query = QUERIES[i % len(QUERIES)]
            i += 1
            response = self.haven.client.post(
                "/api/v1/search", json={"query": query}, headers=self.haven.who.headers
            )
            if response.status_code != 200:
                self.failed.append(f"{response.status_code}: {response.text[:200]}")
                continue
            results = response.json()["results"]
            self.answered += 1
            if not results:
                self.empty.append(query)
            self.models.append({str(r["embed_model"]) for r in results})

    def __enter__(self) -> Searchers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


def corpus(haven: Haven) -> list[uuid.UUID]:
    return [
        haven.ingest(f"Handbook part {i}.\n\n{topic.capitalize()}. " * 3, f"part-{i}.txt")
        for i, topic in enumerate(TOPICS)
    ]


def test_alias_move_reindexes_beside_live_search_switches_and_rolls_back(
    haven: Haven, registry: ModelRegistry
) -> None:
    corpus(haven)
    first = reindex_check(haven.context())
    assert first["build"] is None  # nothing moved: the pointer is recorded, nothing built
    assert first["live_models"] == {ALIAS: "tiny-a/1"}
    live_before = first["live"]
    assert haven.models_served("vacation days") == {OLD}

    uploaded: list[uuid.UUID] = []

    def upload_during_build(done: int, total: int) -> None:
        if not uploaded:
            uploaded.append(
                haven.ingest("Bicycles may be parked in the courtyard shed.", "bikes.txt")
            )

    registry.set_alias(ALIAS, "tiny-b", "1")
    with Searchers(haven) as searchers:
        report = reindex_check(haven.context(upload_during_build))
        # More queries after the switch, once the API's pointer cache (0.2 s) has seen it.
        threading.Event().wait(0.3)
        switched_at = len(searchers.models)
        while len(searchers.models) < switched_at + 6:
            threading.Event().wait(0.05)
    build = report["build"]
    assert build["switched"] is True, build
    assert build["gate"]["passed"] and build["gate"]["missing_document_count"] == 0
    assert build["gate"]["documents"] == len(TOPICS) + 1
    assert searchers.failed == [] and searchers.empty == []
    assert searchers.answered > 0
    assert {OLD} in searchers.models[:switched_at]  # the old model answered during the build
    # ... and the new one after the switch (past the two queries that were under way).
    assert all(models == {NEW} for models in searchers.models[switched_at + 2 :])
    assert haven.reports and haven.reports[-1][0] == haven.reports[-1][1]  # progress to the end

    # The new model answers, the document uploaded during the build is found, and the
    # collection serving has the new model's dimension.
    assert haven.models_served("vacation days") == {NEW}
    found = haven.search("bicycles courtyard shed")["results"]
    assert found and found[0]["document_id"] == str(uploaded[0])
    pointer = haven.rt.pointer.get()
    assert pointer.live.models == {ALIAS: "tiny-b/1"}
    assert pointer.previous is not None and pointer.previous.collection == live_before
    edge = haven.rt.settings.qdrant_path / "edge" / pointer.live.collection
    config = json.loads((edge / "edge_config.json").read_text())
    assert config["vectors"][f"dense-{ALIAS}"]["size"] == 48

    # A rollback is one switch back (the operator's command): the previous collection
    # serves again, nothing rebuilt.
    collections = haven.collections()
    env = {
        "HAVEN_ENV": "test",
        "HAVEN_DATABASE_URL": haven.rt.settings.database_url.get_secret_value(),
    }
    cli = CliRunner()
    rolled = cli.invoke(app, ["maintenance", "re-index", "--rollback"], env=env)
    assert rolled.exit_code == 0, rolled.output
    assert f"serving {live_before} again" in rolled.output
    assert haven.collections() == collections
    status = cli.invoke(app, ["maintenance", "re-index", "--status"], env=env)
    assert json.loads(status.output)["live"]["models"] == {ALIAS: "tiny-a/1"}
    nothing = cli.invoke(app, ["maintenance", "re-index", "--cancel"], env=env)
    assert nothing.exit_code == 1 and "no re-index is in progress" in nothing.output
    threading.Event().wait(0.3)  # the API's pointer cache (0.2 s)
    assert haven.models_served("vacation days") == {OLD}
    assert haven.search("bicycles courtyard shed")["results"][0]["document_id"] == str(uploaded[0])


def test_cancel_mid_build_leaves_the_old_index_serving_and_no_partial_collection(
    haven: Haven, registry: ModelRegistry
) -> None:
    corpus(haven)
    reindex_check(haven.context())
    collections = haven.collections()
    base = haven.rt.settings.qdrant_collection

    def cancel_once(done: int, total: int) -> None:
        if done < total and not getattr(cancel_once, "sent", False):
            cancel_once.sent = True  # type: ignore[attr-defined]
            request_cancel(haven.factory, base)

    registry.set_alias(ALIAS, "tiny-b", "1")
    with Searchers(haven) as searchers:
        report = reindex_check(haven.context(cancel_once))
    assert "canceled" in report, report
    assert searchers.failed == [] and searchers.empty == [] and searchers.answered > 0
    assert all(models == {OLD} for models in searchers.models)
    assert haven.collections() == collections  # the partial collection is gone
    with transaction(haven.factory) as session:
        pointer = IndexPointers(session, base).read()
    assert pointer.building is None and pointer.live.models == {ALIAS: "tiny-a/1"}
    assert haven.models_served("kitchen fridge") == {OLD}


def test_a_model_that_answers_another_dimension_than_its_manifest_is_refused_unwritten(
    haven: Haven, registry: ModelRegistry, tmp_path: Path
) -> None:
    corpus(haven)
    reindex_check(haven.context())
    collections = haven.collections()
    folder = build_tiny_sentence_transformer(tmp_path / "tiny-c", hidden=16, seed=3)
    # The publisher's parameters win over what is read from the files: a wrong manifest.
    registry.publish(folder, name="tiny-c", version="1", type="embed", parameters={"dimension": 99})
    registry.set_alias(ALIAS, "tiny-c", "1")
    with pytest.raises(Invalid, match="returned 16 dimensions; its manifest declares 99"):
        reindex_check(haven.context())
    assert haven.collections() == collections  # the new collection went with the build
    with transaction(haven.factory) as session:
        pointer = IndexPointers(session, haven.rt.settings.qdrant_collection).read()
    assert pointer.building is None and "wrong_dimension" in str(pointer.last_report)
    assert haven.models_served("library") == {OLD}


def test_a_build_cut_short_resumes_where_it_was(haven: Haven, registry: ModelRegistry) -> None:
    corpus(haven)
    reindex_check(haven.context())

    def worker_dies(done: int, total: int) -> None:
        raise RuntimeError("the worker died")

    registry.set_alias(ALIAS, "tiny-b", "1")
    with pytest.raises(RuntimeError, match="the worker died"):
        reindex_check(haven.context(worker_dies))
    with transaction(haven.factory) as session:
        pointer = IndexPointers(session, haven.rt.settings.qdrant_collection).read()
    assert pointer.building is not None and pointer.live.models == {ALIAS: "tiny-a/1"}
    assert haven.models_served("parking permits") == {OLD}  # the live index is untouched

    # The next run (the schedule's, or another worker's) carries on with the same collection:
    # the first batch (4 chunks) is not embedded again.
    report = reindex_check(haven.context())["build"]
    assert report["collection"] == pointer.building.collection
    assert report["switched"] is True
    assert report["embedded"] == len(TOPICS) - 4
    threading.Event().wait(0.3)
    assert haven.models_served("parking permits") == {NEW}


def test_warmup_fetches_the_aliases_targets_into_the_worker_and_emb_caches(
    haven: Haven, registry: ModelRegistry
) -> None:
    cache = haven.rt.settings.model_cache_dir
    registry.set_alias(ALIAS, "tiny-b", "1")
    report = warmup(haven.context())
    # No generation alias in this registry: nothing for llm to fetch.
    assert report == {"worker_cache": ["tiny-b/1"], "emb_cache": ["tiny-b/1"], "llm_cache": []}
    assert (cache / "tiny-b" / "1" / "manifest.json").is_file()


def test_emb_refuses_pins_and_warm_ups_it_cannot_serve_with_a_clear_4xx(emb_url: str) -> None:
    texts = {"texts": ["vacation days"], "aliases": [ALIAS]}
    with httpx.Client(base_url=emb_url, timeout=60) as client:
        for pin in ("tiny-z/1", "../../etc/passwd", "x" * 5000, "tiny-a"):
            response = client.post("/embed", json={**texts, "pins": {ALIAS: pin}})
            assert response.status_code == 404, (pin, response.text)
            assert "cannot embed with" in response.json()["detail"]
        pinned = client.post("/embed", json={**texts, "pins": {ALIAS: "tiny-a/1"}})
        assert pinned.status_code == 200
        assert pinned.json()["models"][0]["name"] == "tiny-a"
        assert client.post("/warm", json={"models": ["nope/1"]}).status_code == 404
        assert client.post("/warm", json={"models": ["a\x00/1"]}).status_code == 404
        assert client.post("/warm", json={"models": []}).status_code == 422


def test_canceling_the_maintenance_job_cancels_the_build_the_same_way(
    haven: Haven, registry: ModelRegistry
) -> None:
    corpus(haven)
    reindex_check(haven.context())
    collections = haven.collections()
    progressed: list[int] = []

    def job_canceled() -> None:  # as the job runner's cancel reaches a running task
        if progressed:
            raise JobCanceled()

    ctx = haven.context(lambda done, total: progressed.append(done))
    ctx.canceled = job_canceled
    registry.set_alias(ALIAS, "tiny-b", "1")
    with pytest.raises(JobCanceled):
        reindex_check(ctx)
    assert haven.collections() == collections
    with transaction(haven.factory) as session:
        pointer = IndexPointers(session, haven.rt.settings.qdrant_collection).read()
    assert pointer.building is None and pointer.live.models == {ALIAS: "tiny-a/1"}
    assert haven.models_served("library") == {OLD}
