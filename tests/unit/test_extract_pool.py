"""The extractor pool: real child processes extracting real files under small limits."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.hostile_files import (
    busy_pdf,
    docx_of_many_paragraphs,
    docx_with_large_part,
    many_pages_pdf,
)
from tests.unit.test_extract import MARKDOWN_DOC, make_docx, make_pdf
from workers.ingest.extract import (
    DOCX,
    MARKDOWN,
    PDF,
    ExtractionError,
    ExtractLimits,
    ExtractMemory,
    ExtractTimeout,
    ExtractTooLarge,
    UnsupportedType,
    extract,
)
from workers.ingest.pool import ExtractorBusy, ExtractorPool, ExtractorUnavailable, PoolConfig

MiB = 1024 * 1024
LIMITS = ExtractLimits(max_pages=2000)
CONFIG = PoolConfig(size=2, recycle_after=50, timeout_seconds=4, memory_bytes=700 * MiB)


@pytest.fixture()
def pool() -> Iterator[ExtractorPool]:
    pool = ExtractorPool(CONFIG)
    try:
        yield pool
    finally:
        pool.close()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_the_pool_extracts_what_the_worker_itself_would(
    pool: ExtractorPool, tmp_path: Path
) -> None:
    files = [
        (write(tmp_path / "guide.md", MARKDOWN_DOC.encode()), MARKDOWN),
        (make_pdf(tmp_path, ["First page.", "Second page."]), PDF),
        (make_docx(tmp_path), DOCX),
    ]
    for path, mime in files:
        assert pool.extract(path, mime, LIMITS) == extract(path, mime, LIMITS)


def test_a_refused_file_gives_the_same_reason_and_keeps_the_child(
    pool: ExtractorPool, tmp_path: Path
) -> None:
    broken = write(tmp_path / "broken.pdf", b"%PDF-1.7\n" + b"\x00garbage" * 200)
    with pytest.raises(ExtractionError) as in_process:
        extract(broken, PDF, LIMITS)
    pool.extract(make_pdf(tmp_path, ["warm up"]), PDF, LIMITS)
    children = pool.pids()
    with pytest.raises(ExtractionError) as pooled:
        pool.extract(broken, PDF, LIMITS)
    assert str(pooled.value) == str(in_process.value)
    assert pool.pids() == children


def test_a_file_that_keeps_the_parser_busy_is_stopped_at_the_deadline(
    pool: ExtractorPool, tmp_path: Path
) -> None:
    path = write(tmp_path / "busy.pdf", busy_pdf(pages=1000, blocks_per_page=100_000))
    assert path.stat().st_size < 100_000
    with pytest.raises(ExtractTimeout) as caught:
        pool.extract(path, PDF, LIMITS)
    assert str(caught.value) == "extract.timeout: extraction took longer than the limit of 4 s"
    # The pool goes on with a fresh child.
    assert pool.extract(make_pdf(tmp_path, ["After the storm."]), PDF, LIMITS)[0].page == 1


def test_a_file_that_allocates_without_bound_is_stopped_at_the_memory_limit(
    tmp_path: Path,
) -> None:
    path = docx_of_many_paragraphs(tmp_path / "greedy.docx", 60)
    assert path.stat().st_size < 2 * MiB
    # Time enough to reach the memory limit on a slow machine: memory must be what stops it.
    pool = ExtractorPool(PoolConfig(size=1, timeout_seconds=120, memory_bytes=600 * MiB))
    try:
        with pytest.raises(ExtractMemory) as caught:
            pool.extract(path, DOCX, LIMITS)
        assert str(caught.value) == (
            "extract.memory: extraction needed more than the limit of 600 MiB of memory"
        )
        assert pool.extract(make_pdf(tmp_path, ["Calm again."]), PDF, LIMITS)[0].page == 1
    finally:
        pool.close()


def test_files_over_a_size_limit_fail_fast_without_costing_the_child(
    pool: ExtractorPool, tmp_path: Path
) -> None:
    pool.extract(make_pdf(tmp_path, ["warm up"]), PDF, LIMITS)
    children = pool.pids()
    pages = write(tmp_path / "pages.pdf", many_pages_pdf(1_000_000))
    with pytest.raises(ExtractTooLarge, match="PDF has 1,000,000 pages"):
        pool.extract(pages, PDF, ExtractLimits(max_pages=100))
    big = docx_with_large_part(tmp_path / "big.docx", 300)
    with pytest.raises(ExtractTooLarge, match=r"word/document\.xml would expand to 300\.0 MiB"):
        pool.extract(big, DOCX, LIMITS)
    assert pool.pids() == children


def test_a_child_is_replaced_after_its_share_of_files(tmp_path: Path) -> None:
    pool = ExtractorPool(PoolConfig(size=1, recycle_after=2, timeout_seconds=30))
    try:
        path = make_pdf(tmp_path, ["Recycled."])
        pool.extract(path, PDF, LIMITS)
        [first] = pool.pids()
        pool.extract(path, PDF, LIMITS)
        [second] = pool.pids()
        pool.extract(path, PDF, LIMITS)
        assert first != second
        assert pool.pids() == [second]
    finally:
        pool.close()


def test_sixteen_job_threads_share_two_children(pool: ExtractorPool, tmp_path: Path) -> None:
    paths = [make_pdf(tmp_path, [f"Document number {n}."], name=f"{n}.pdf") for n in range(16)]
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for _ in range(3):
                [block] = pool.extract(paths[n], PDF, LIMITS)
                results[n] = block.text.strip()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results == {n: f"Document number {n}." for n in range(16)}
    assert len(pool.pids()) == 2


def test_closing_the_pool_stops_its_children(tmp_path: Path) -> None:
    pool = ExtractorPool(CONFIG)
    pool.extract(make_pdf(tmp_path, ["Bye."]), PDF, LIMITS)
    children = pool.pids()
    assert len(children) == 2
    pool.close()
    assert all(not Path(f"/proc/{pid}").exists() for pid in children)
    with pytest.raises(ExtractorUnavailable, match="closed"):
        pool.extract(make_pdf(tmp_path, ["Again."]), PDF, LIMITS)


def test_an_unsupported_type_is_refused_without_a_child(pool: ExtractorPool) -> None:
    with pytest.raises(UnsupportedType):
        pool.extract(Path("/nonexistent"), "image/png", LIMITS)
    assert pool.pids() == []


def test_a_memory_limit_too_small_for_the_parsers_is_a_worker_problem(tmp_path: Path) -> None:
    pool = ExtractorPool(PoolConfig(size=1, memory_bytes=32 * MiB))
    try:
        with pytest.raises(ExtractorUnavailable, match="HAVEN_EXTRACT_MEMORY_MB"):
            pool.extract(make_pdf(tmp_path, ["Never read."]), PDF, LIMITS)
    finally:
        pool.close()


def test_one_tenants_slow_file_leaves_a_child_for_another_tenant(tmp_path: Path) -> None:
    """The default pool of two: tenant a's file that keeps a parser busy until the deadline
    holds one child; a's next file gives up waiting (its job is deferred), while tenant b's
    file is extracted at once in the child kept for tenants with nothing in flight."""
    pool = ExtractorPool(
        PoolConfig(size=2, timeout_seconds=8, memory_bytes=700 * MiB, wait_seconds=0.5)
    )
    busy = write(tmp_path / "busy.pdf", busy_pdf(pages=1000, blocks_per_page=100_000))
    outcome: list[BaseException] = []

    def slow() -> None:
        try:
            pool.extract(busy, PDF, LIMITS, tenant="a")
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=slow)
    try:
        thread.start()
        deadline = time.monotonic() + 30
        while pool.holding() != {"a": 1}:
            assert time.monotonic() < deadline, "a's slow file never started"
            time.sleep(0.02)
        with pytest.raises(ExtractorBusy):
            pool.extract(make_pdf(tmp_path, ["More of a."], name="a2.pdf"), PDF, LIMITS, tenant="a")
        [block] = pool.extract(make_pdf(tmp_path, ["Minutes of b."]), PDF, LIMITS, tenant="b")
        assert block.text.strip() == "Minutes of b."
        assert pool.holding() == {"a": 1}  # a's file is still being parsed
        assert pool.backlogged("a") and not pool.backlogged("b")
        thread.join(30)
        assert [type(exc) for exc in outcome] == [ExtractTimeout]
    finally:
        pool.close()
        thread.join(30)
