"""Ingest end to end: real API + worker process on RabbitMQ, real emb, embedded Qdrant (Edge)."""

from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import Any

import pytest
from fpdf import FPDF
from sqlalchemy import func, select
from transformers import AutoTokenizer

from haven.db.engine import transaction
from haven.db.tables import Chunk
from haven.index_pointer import IndexPointers
from haven.settings import StoreSettings
from haven.vectors import close_embedded, make_index, make_qdrant
from models.loader import ModelCache
from models.store import registry_from_settings
from tests.e2e.conftest import Stack
from tests.e2e.helpers import job, search, upload, wait_for, wait_job
from tests.fixtures.api import Account, create_tenant_with_admin
from workers.ingest.chunking import chunk_blocks
from workers.ingest.extract import ExtractLimits, extract
from workers.ingest.normalize import normalize_blocks
from workers.settings import WorkerSettings

WORDS = (
    "archive",
    "budget",
    "cargo",
    "delta",
    "ember",
    "falcon",
    "garnet",
    "harbor",
    "island",
    "jasper",
    "kernel",
    "lantern",
    "meadow",
    "nectar",
    "orbit",
    "pepper",
    "quartz",
    "river",
    "saffron",
    "timber",
    "umber",
    "velvet",
    "willow",
    "xenon",
    "yarrow",
    "zephyr",
    "policy",
    "review",
    "contract",
    "invoice",
    "payroll",
    "travel",
    "audit",
    "vendor",
    "shipment",
    "warranty",
    "clinic",
    "patient",
    "dosage",
    "trial",
    "cohort",
    "protein",
    "enzyme",
    "membrane",
    "receptor",
    "signal",
    "pathway",
    "tissue",
)


def synthetic_docs(count: int, sections: int) -> list[tuple[str, bytes]]:
    """Markdown files of made-up but varied prose (seeded), several sections each, so most
    files become several chunks. Tests make their own data; nothing is read from outside."""
    rng = random.Random(1234)
    files = []
    for i in range(count):
        parts = []
        for j in range(sections):
            sentences = [
                " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 18))).capitalize() + "."
                for _ in range(rng.randint(10, 16))
            ]
            parts.append(f"# Section {i}.{j} {rng.choice(WORDS)}\n\n" + " ".join(sentences))
        files.append((f"synthetic-{i:03d}.md", "\n\n".join(parts).encode()))
    return files


def expected_chunks(stack: Stack, files: list[tuple[str, bytes]], tmp: Path) -> int:
    """What the files must become, computed here with the same extractor and tokenizer."""
    settings = WorkerSettings()
    cache = ModelCache(registry_from_settings(stack.settings), tmp / "models")
    tokenizer = AutoTokenizer.from_pretrained(str(cache.fetch("minilm").path))
    total = 0
    for name, content in files:
        path = tmp / name
        path.write_bytes(content)
        blocks = normalize_blocks(extract(path, "text/markdown", ExtractLimits()))
        total += len(
            chunk_blocks(
                blocks,
                tokenizer,
                max_tokens=settings.chunk_max_tokens,
                overlap_tokens=settings.chunk_overlap_tokens,
            )
        )
    return total


def qdrant_points(stack: Stack, tenant_id: uuid.UUID) -> int:
    """Count the tenant's points with the API process stopped (the embedded store is
    single-process), in the collection the index pointer names live: the suite's modules
    share one database, and its pointer keeps the collection of the first ingest."""
    settings = StoreSettings(
        qdrant_path=Path(stack.env["HAVEN_QDRANT_PATH"]),
        qdrant_collection=stack.env["HAVEN_QDRANT_COLLECTION"],
    )
    with transaction(stack.session_factory) as session:
        pointer = IndexPointers(session, settings.qdrant_collection).read()
    try:
        return make_index(settings, make_qdrant(settings), pointer).count(tenant_id)
    finally:
        close_embedded(settings)


def chunk_rows(stack: Stack, tenant_id: uuid.UUID) -> int:
    with transaction(stack.session_factory) as session:
        return int(
            session.execute(
                select(func.count()).select_from(Chunk).where(Chunk.tenant_id == tenant_id)
            ).scalar_one()
        )


def test_the_all_in_one_is_ready_only_with_its_worker(stack: Stack) -> None:
    body = stack.client.get("/readyz").json()
    assert body["status"] == "ready"
    assert body["checks"]["worker"]["ok"] is True


def test_kill_9_mid_ingest_loses_and_duplicates_nothing(
    stack: Stack, tenant: Account, tmp_path: Path
) -> None:
    files = synthetic_docs(50, sections=3)
    expected = expected_chunks(stack, files, tmp_path)
    uploaded = [upload(stack, tenant, name, content) for name, content in files]
    job_ids = [u["job_id"] for u in uploaded]

    def ready_count() -> int:
        listed = stack.client.get(
            "/api/v1/documents", params={"state": "ready", "limit": 200}, headers=tenant.headers
        ).json()
        return int(listed["total"])

    wait_for(lambda: ready_count() >= 3, 240, "a few documents to be ready")
    assert ready_count() < 50, "the worker finished before it could be killed; use more files"
    stack.api.kill9()
    stack.api.start()

    wait_for(lambda: ready_count() == 50, 600, "all 50 documents to be ready", every=2)
    jobs = [job(stack, tenant, j) for j in job_ids]
    assert {j["state"] for j in jobs} == {"ready"}

    stack.api.stop()
    try:
        points = qdrant_points(stack, tenant.tenant_id)
    finally:
        stack.api.start()
    rows = chunk_rows(stack, tenant.tenant_id)
    assert (points, rows) == (expected, expected)


def test_same_file_once_and_new_version_replaces_old_in_search(
    stack: Stack, tenant: Account
) -> None:
    v1 = b"# Travel policy\n\nEmployees book trains through the zephyrine portal.\n"
    v2 = b"# Travel policy\n\nEmployees book trains through the quillmoor desk.\n"
    first = upload(stack, tenant, "travel.md", v1, source_id="policy-travel")
    wait_job(stack, tenant, first["job_id"], {"ready"})
    again = upload(stack, tenant, "travel-copy.md", v1)
    assert again["duplicate"] is True
    assert again["document"]["id"] == first["document"]["id"]
    assert [r["version"] for r in search(stack, tenant, "zephyrine portal")] == [1]

    second = upload(stack, tenant, "travel.md", v2, source_id="policy-travel")
    assert (second["document"]["id"], second["version"]) == (first["document"]["id"], 2)
    wait_job(stack, tenant, second["job_id"], {"ready"})
    hits = search(stack, tenant, "zephyrine portal quillmoor desk")
    assert hits, "the new version is searchable"
    assert {h["version"] for h in hits} == {2}
    assert search(stack, tenant, "zephyrine", mode="lexical") == []
    detail = stack.client.get(
        f"/api/v1/documents/{first['document']['id']}", headers=tenant.headers
    ).json()
    assert detail["current_version"] == 2
    assert detail["chunks"] == 1  # version 1's chunk rows were replaced, not kept


def test_cancel_running_job_leaves_no_vectors(stack: Stack, tenant: Account) -> None:
    big = synthetic_docs(1, sections=400)[0][1]
    body = upload(stack, tenant, "long.md", big)
    wait_for(
        lambda: job(stack, tenant, body["job_id"])["progress_done"] >= 3,
        120,
        "the job to start embedding",
        every=0.1,
    )
    canceled = stack.client.post(f"/api/v1/jobs/{body['job_id']}/cancel", headers=tenant.headers)
    assert canceled.status_code == 200
    final = wait_job(stack, tenant, body["job_id"], {"canceled", "ready"})
    assert final["state"] == "canceled"
    doc = stack.client.get(
        f"/api/v1/documents/{body['document']['id']}", headers=tenant.headers
    ).json()
    assert doc["state"] == "canceled"
    assert doc["chunks"] == 0
    query = big.decode().split("\n\n")[1][:80]
    assert search(stack, tenant, query, filters={"document_ids": [body["document"]["id"]]}) == []

    # Retried, the canceled job runs to the end (the cancel it saw does not stop it again).
    retried = stack.client.post(f"/api/v1/jobs/{body['job_id']}/retry", headers=tenant.headers)
    assert retried.status_code == 200, retried.text
    assert wait_job(stack, tenant, body["job_id"], {"ready", "canceled", "failed"})["state"] == (
        "ready"
    )
    assert search(stack, tenant, query, filters={"document_ids": [body["document"]["id"]]})


def test_pdf_pages_reach_chunk_rows_and_search(stack: Stack, tenant: Account) -> None:
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    words = ["marrowfield", "tinsdale", "corveth"]
    for word in words:
        pdf.add_page()
        pdf.multi_cell(0, 8, f"The {word} survey covers soil moisture and drainage.")
    body = upload(stack, tenant, "survey.pdf", bytes(pdf.output()))
    assert wait_job(stack, tenant, body["job_id"], {"ready", "failed"})["state"] == "ready"

    for page, word in enumerate(words, start=1):
        hits = search(stack, tenant, word, mode="lexical")
        assert [h["page"] for h in hits] == [page], word
    with transaction(stack.session_factory) as session:
        pages = session.execute(
            select(Chunk.page)
            .where(Chunk.document_id == uuid.UUID(body["document"]["id"]))
            .order_by(Chunk.position)
        )
        assert [p for (p,) in pages] == [1, 2, 3]


def test_corrupt_pdf_fails_with_a_readable_error(stack: Stack, tenant: Account) -> None:
    body = upload(stack, tenant, "broken.pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog >>\ngarbage")
    final = wait_job(stack, tenant, body["job_id"], {"failed", "ready"})
    assert final["state"] == "failed"
    assert final["last_error"].startswith("extract.")  # a reason code
    assert "pdf" in final["last_error_message"].lower()
    assert "Traceback" not in final["last_error_message"]
    assert final["attempts"] == 1  # a broken document is not retried
    # Nothing else is affected: another upload still goes through.
    ok = upload(stack, tenant, "fine.txt", b"still working after a broken file")
    assert wait_job(stack, tenant, ok["job_id"], {"ready", "failed"})["state"] == "ready"


def test_job_that_keeps_failing_is_dead_lettered_then_replayed(
    stack: Stack, tenant: Account
) -> None:
    stack.emb.stop()  # every embedding call now fails: a transient error, retried
    try:
        body = upload(stack, tenant, "unlucky.txt", b"the embedding service is away today")
        retried = upload(stack, tenant, "unlucky-2.txt", b"and it stays away for a while")
        failed = wait_job(stack, tenant, body["job_id"], {"failed"}, timeout=180)
        assert failed["attempts"] == failed["max_attempts"]
        assert failed["last_error"] == "emb.unavailable"
        assert "gave up after" in failed["last_error_message"]
        wait_job(stack, tenant, retried["job_id"], {"failed"}, timeout=180)

        def listed() -> list[dict[str, Any]]:
            response = stack.client.get("/api/v1/admin/dead-letters", headers=tenant.headers)
            assert response.status_code == 200
            return [d for d in response.json() if d["job_id"] == body["job_id"]]

        wait_for(lambda: len(listed()) == 1, 30, "the dead letter to be listed")
        letter = listed()[0]
        assert letter["task"] == "ingest.document"
    finally:
        stack.emb.start()

    replay = stack.client.post(
        f"/api/v1/admin/dead-letters/{letter['id']}/replay", headers=tenant.headers
    )
    assert replay.status_code == 200, replay.text
    assert wait_job(stack, tenant, body["job_id"], {"ready", "failed"})["state"] == "ready"
    again = stack.client.post(f"/api/v1/jobs/{retried['job_id']}/retry", headers=tenant.headers)
    assert again.status_code == 200
    assert wait_job(stack, tenant, retried["job_id"], {"ready", "failed"})["state"] == "ready"


def test_other_tenants_cannot_see_download_delete_or_find(
    stack: Stack, admin: Account, tenant: Account
) -> None:
    other = create_tenant_with_admin(stack.client, admin)
    secret = b"The vault combination is kept by the marmalade committee."
    body = upload(stack, tenant, "secret.txt", secret)
    wait_job(stack, tenant, body["job_id"], {"ready"})
    doc = f"/api/v1/documents/{body['document']['id']}"

    assert search(stack, tenant, "marmalade committee vault")
    for mode in ("hybrid", "dense", "lexical"):
        assert search(stack, other, "marmalade committee vault", mode=mode) == []
    assert stack.client.get(doc, headers=other.headers).status_code == 404
    assert stack.client.get(f"{doc}/download", headers=other.headers).status_code == 404
    assert stack.client.delete(doc, headers=other.headers).status_code == 404
    assert stack.client.get("/api/v1/documents", headers=other.headers).json()["total"] == 0
    assert stack.client.get(doc, headers=tenant.headers).status_code == 200  # untouched

    assert stack.client.delete(doc, headers=tenant.headers).status_code == 204
    assert search(stack, tenant, "marmalade committee vault") == []


@pytest.fixture(autouse=True)
def _api_alive(stack: Stack) -> None:
    """A test that stopped a service must not break the next one."""
    if stack.api.process is None or stack.api.process.poll() is not None:
        stack.api.start()


RUSSIAN_DOC = (
    "# Положение об отпусках\n\n"
    "Ежегодный оплачиваемый отпуск длится 28 календарных дней. Заявление на отпуск "
    "подаётся через кадровый портал не позднее чем за 14 дней до его начала. При увольнении "
    "за неиспользованные дни отпуска выплачивается компенсация.\n"
).encode()
ENGLISH_DOC = (
    b"# Expense policy\n\nMeals during business travel are reimbursed up to 60 dollars per "
    b"day. Submit every expense report within 30 days of the purchase, with the receipt.\n"
)


def test_chunks_carry_their_language_and_the_lang_filter_returns_only_it(
    stack: Stack, tenant: Account
) -> None:
    ru = upload(stack, tenant, "otpusk.md", RUSSIAN_DOC)
    en = upload(stack, tenant, "expenses.md", ENGLISH_DOC)
    for uploaded in (ru, en):
        wait_job(stack, tenant, uploaded["job_id"], {"ready"})

    # A Russian question in other word forms than the document's finds it, by the lexical
    # channel alone: the bundled model declares English only.
    response = stack.client.post(
        "/api/v1/search",
        json={"query": "Сколько дней длятся отпуска?", "top_k": 5},
        headers=tenant.headers,
    ).json()
    assert response["query_lang"] == "ru"
    assert response["channels"] == ["lexical"]
    assert response["results"][0]["document_id"] == ru["document"]["id"]
    assert response["results"][0]["lang"] == "ru"
    english = stack.client.post(
        "/api/v1/search", json={"query": "How are meals reimbursed?"}, headers=tenant.headers
    ).json()
    assert (english["query_lang"], english["channels"]) == ("en", ["dense", "lexical"])
    assert english["results"][0]["document_id"] == en["document"]["id"]

    # Each language's filter returns that language's chunks only, whatever the query.
    for lang, document in (("ru", ru), ("en", en)):
        for query in ("отпуск", "expense report", "policy"):
            hits = search(stack, tenant, query, filters={"lang": [lang]})
            assert {h["lang"] for h in hits} <= {lang}
            assert {h["document_id"] for h in hits} <= {document["document"]["id"]}
        assert search(stack, tenant, "policy отпуск", filters={"lang": [lang]}), lang

    # The document's main language in the API, the chunks' in PostgreSQL.
    for lang, document in (("ru", ru), ("en", en)):
        detail = stack.client.get(
            f"/api/v1/documents/{document['document']['id']}", headers=tenant.headers
        ).json()
        assert detail["lang"] == lang
        with transaction(stack.session_factory) as session:
            langs = session.execute(
                select(Chunk.lang).where(Chunk.document_id == uuid.UUID(document["document"]["id"]))
            ).scalars()
            assert set(langs) == {lang}
