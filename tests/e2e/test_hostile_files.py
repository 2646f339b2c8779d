"""Hostile uploads against a real all-in-one API + worker: each fails with its reason within
the extraction limits, never retried, while another tenant's normal document becomes ready
and the API keeps answering."""

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
from tests.e2e.helpers import job, upload, wait_for, wait_job
from tests.fixtures.api import Account, create_tenant_with_admin
from tests.fixtures.hostile_files import (
    busy_pdf,
    docx_of_many_paragraphs,
    docx_with_large_part,
    many_pages_pdf,
    redos_markdown,
)

TIMEOUT_SECONDS = 20
# Limits small enough for the test; the lease is longer than the slowest extraction here.
STACK_ENV = {
    "HAVEN_WORKER_CONCURRENCY": "8",
    "HAVEN_EXTRACT_POOL_SIZE": "4",
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
        # A thousand pages that each cost the parser seconds of CPU and no text.
        "busy.pdf": (busy_pdf(pages=1000, blocks_per_page=100_000), "extract.timeout"),
    }
    jobs = {
        name: upload(stack, attacker, name, content)["job_id"]
        for name, (content, _) in hostile.items()
    }
    # Brackets that made the old Markdown regexes quadratic: now plain text, read at once.
    brackets = upload(stack, attacker, "brackets.md", redos_markdown(30_000))["job_id"]
    normal = upload(
        stack,
        neighbour,
        "minutes.md",
        b"# Board minutes\n\nThe board approved the ostravian bridge budget.\n",
    )["job_id"]

    normal_job = wait_job(stack, neighbour, normal, {"ready", "failed"}, timeout=180)
    assert normal_job["state"] == "ready", normal_job["last_error"]

    ended = {
        name: wait_job(stack, attacker, job_id, {"ready", "failed"}, timeout=180)
        for name, job_id in jobs.items()
    }
    for name, (_, code) in hostile.items():
        body = ended[name]
        assert body["state"] == "failed", (name, body)
        # The reason code, and a sentence naming the limit that was hit.
        assert body["last_error"] == code, (name, body["last_error"])
        assert str(body["last_error_message"]).startswith(f"{code}: "), (name, body)
        assert body["attempts"] == 1, (name, body)  # a limit is final: no retry
    # Past extraction (embedding its hundred-odd chunks may take a while on a busy machine).
    wait_for(
        lambda: job(stack, attacker, brackets)["progress_done"] >= 2,
        120,
        "the bracket file to be extracted",
    )
    assert job(stack, attacker, brackets)["state"] in ("running", "ready")

    # The neighbour did not queue behind the file that ran into the deadline.
    assert finished(normal_job) < finished(ended["busy.pdf"])
    assert probe.failures == []
    assert probe.latencies, "the probe never ran"
