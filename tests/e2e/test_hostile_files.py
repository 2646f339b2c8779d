"""Hostile uploads against a real all-in-one API + worker with the default extractor pool
(two processes): each fails with its reason within the extraction limits, never retried, while
another tenant's normal document becomes ready during the hostile ones and the API keeps
answering."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Stack
from tests.e2e.helpers import job, search, upload, wait_for, wait_job
from tests.fixtures.api import Account, create_tenant_with_admin
from tests.fixtures.hostile_files import (
    busy_pdf,
    docx_of_many_paragraphs,
    docx_with_large_part,
    many_pages_pdf,
    redos_markdown,
)

# Long enough that the other tenant's document, queued behind the attacker's files, is ready
# while the busy PDF is still being parsed, even on a loaded machine.
TIMEOUT_SECONDS = 60
ENDED = {"ready", "failed", "canceled"}
# The default extractor pool (HAVEN_EXTRACT_POOL_SIZE 2, one process kept for tenants with
# nothing in flight). Two job threads only, so the attacker's waiting jobs would take every
# one of them if they were not deferred. Limits small enough for the test; the lease is
# longer than the slowest extraction here.
STACK_ENV = {
    "HAVEN_WORKER_CONCURRENCY": "2",
    "HAVEN_EXTRACT_WAIT_SECONDS": "2",
    "HAVEN_JOB_DEFER_SECONDS": "1",
    "HAVEN_JOB_DEFER_MAX_SECONDS": "4",
    "HAVEN_EXTRACT_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),
    "HAVEN_EXTRACT_MEMORY_MB": "700",
    "HAVEN_EXTRACT_MAX_PAGES": "1000",
    "HAVEN_EXTRACT_MAX_UNCOMPRESSED_MB": "64",
    "HAVEN_JOB_LEASE_SECONDS": "90",
    "HAVEN_EMB_REPLICAS": "1",
}


@dataclass
class HealthProbe:
    """Polls /healthz every 0.5 s from its own thread, as a load balancer would."""

    base_url: str
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=5) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = client.get("/healthz")
                    if response.status_code != 200:
                        self.failures.append(f"HTTP {response.status_code}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                self.latencies.append(time.monotonic() - started)
                self._stop.wait(0.5)

    def stop(self) -> None:
        self._stop.set()


@pytest.fixture()
def probe(stack: Stack) -> Iterator[HealthProbe]:
    probe = HealthProbe(stack.base_url)
    thread = threading.Thread(target=probe.run, daemon=True)
    thread.start()
    try:
        yield probe
    finally:
        probe.stop()
        thread.join()


def finished(body: dict[str, object]) -> datetime:
    return datetime.fromisoformat(str(body["finished_at"]))


def test_hostile_files_fail_with_their_reason_while_others_are_served(
    stack: Stack, admin: Account, probe: HealthProbe, tmp_path: Path
) -> None:
    attacker = create_tenant_with_admin(stack.client, admin)
    neighbour = create_tenant_with_admin(stack.client, admin)
    # A thousand pages that each cost the parser seconds of CPU and no text: it holds one of
    # the two extractors until the deadline.
    busy = upload(stack, attacker, "busy.pdf", busy_pdf(pages=1000, blocks_per_page=100_000))
    wait_for(
        lambda: job(stack, attacker, busy["job_id"])["progress_done"] >= 1,
        120,
        "the busy PDF to be downloaded and handed to an extractor",
    )
    hostile = {
        # Thousands of pages from a 2 KB file: refused from the page tree, before parsing.
        "pages.pdf": (many_pages_pdf(1_000_000), "extract.too_large"),
        # 300 MiB of XML in a 300 KB DOCX: refused from the zip directory, before lxml.
        "bomb.docx": (
            docx_with_large_part(tmp_path / "bomb.docx", 300).read_bytes(),
            "extract.too_large",
        ),
        # 60 MiB of empty paragraphs in a 0.8 MB DOCX that passes the zip checks: the XML
        # tree grows past a gigabyte.
        "greedy.docx": (
            docx_of_many_paragraphs(tmp_path / "greedy.docx", 60).read_bytes(),
            "extract.memory",
        ),
    }
    jobs = {
        name: upload(stack, attacker, name, content)["job_id"]
        for name, (content, _) in hostile.items()
    }
    jobs["busy.pdf"] = busy["job_id"]
    hostile["busy.pdf"] = (b"", "extract.timeout")
    # One line of brackets that made the old Markdown regexes quadratic (a 1 MB line: hours).
    brackets = upload(stack, attacker, "brackets.md", redos_markdown(30_000))
    # Queued behind all of the attacker's files, which wait for the one extractor the
    # attacker may use; the worker has two job threads.
    normal = upload(
        stack,
        neighbour,
        "minutes.md",
        b"# Board minutes\n\nThe board approved the ostravian bridge budget.\n",
    )["job_id"]

    # The neighbour's document is ready while the attacker's busy PDF is still being parsed:
    # it waited neither for the attacker's extractors nor for the job threads.
    normal_job = wait_job(stack, neighbour, normal, ENDED, timeout=180)
    still = job(stack, attacker, busy["job_id"])
    assert normal_job["state"] == "ready", normal_job
    assert (still["state"], still["progress_done"]) == ("running", 1), (still, normal_job)

    ended = {
        name: wait_job(stack, attacker, job_id, ENDED, timeout=240) for name, job_id in jobs.items()
    }
    for name, (_, code) in hostile.items():
        body = ended[name]
        assert body["state"] == "failed", (name, body)
        # The reason code, and a sentence naming the limit that was hit.
        assert body["last_error"] == code, (name, body["last_error"])
        assert str(body["last_error_message"]).startswith(f"{code}: "), (name, body)
        # A limit is final: no retry; waiting for an extractor did not spend an attempt.
        assert body["attempts"] == 1, (name, body)
    assert finished(normal_job) < finished(ended["busy.pdf"])

    # The bracket file is no attack any more: markdown-it-py reads it in linear time, so it
    # ends ready (embedding its hundred-odd chunks may take a while on a busy machine) and
    # its text is found as written, brackets and all.
    bracket_job = wait_job(stack, attacker, brackets["job_id"], ENDED, timeout=240)
    assert (bracket_job["state"], bracket_job["attempts"]) == ("ready", 1), bracket_job
    hits = search(stack, attacker, "Brackets", mode="lexical")
    assert hits and hits[0]["document_id"] == brackets["document"]["id"]
    assert "[a[a[a" in hits[0]["text"].replace(" ", "")  # the chunker spaces its tokens
    # Nothing of the attacker's shows up for the neighbour.
    assert search(stack, neighbour, "Brackets", mode="lexical") == []

    assert probe.failures == []
    assert probe.latencies, "the probe never ran"
