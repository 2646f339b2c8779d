"""Benchmark: what extracting through the pool of limited child processes costs per document,
against extracting in the worker's own process.

Writes SciFact abstracts as Markdown files (as ``bench/ingest`` uploads them) and extracts each
one in process with ``extract`` and through an ``ExtractorPool`` of the default size, one caller
at a time (the latency a job pays) and from 16 threads (a worker's job threads). Both sides
alternate twice after a warm-up; the faster run of each counts.

    .venv/bin/python -m bench.extract_pool.run [--docs 500] [--no-record]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from bench.common import machine, own_cpu_seconds, record
from workers.ingest.extract import MARKDOWN, ExtractLimits, TextBlock, extract
from workers.ingest.pool import ExtractorPool, PoolConfig


def corpus_files(limit: int) -> list[tuple[str, bytes]]:
    """SciFact abstracts as Markdown files, as ``bench/ingest`` uploads them (the corpus is
    in ``shared/eval/scifact`` beside the checkout, or beside the worktrees)."""
    here = Path(__file__).resolve()
    corpus = next(
        path
        for parent in here.parents
        if (path := parent / "shared" / "eval" / "scifact" / "corpus.jsonl").exists()
    )
    files = []
    with corpus.open(encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            files.append((f"{doc['_id']}.md", f"# {doc['title']}\n\n{doc['text']}\n".encode()))
            if len(files) >= limit:
                break
    return files


def timed(
    paths: list[Path],
    extract_one: Callable[[Path], list[TextBlock]],
    threads: int,
    children: Callable[[], list[int]],
) -> tuple[float, float]:
    """Wall seconds, and CPU seconds of this process and the pool's children."""
    pids = children()

    def cpu() -> float:
        return time.process_time() + sum(own_cpu_seconds(pid) for pid in pids)

    cpu_started, started = cpu(), time.perf_counter()
    if threads == 1:
        for path in paths:
            extract_one(path)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(extract_one, paths))
    return time.perf_counter() - started, cpu() - cpu_started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=500)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="haven-bench-extract-"))
    paths = []
    for name, content in corpus_files(args.docs):
        path = work / name
        path.write_bytes(content)
        paths.append(path)
    mean_size = sum(p.stat().st_size for p in paths) / len(paths)
    limits = ExtractLimits()
    default = PoolConfig()
    # No recycling inside the timed runs: what a replacement costs is measured on its own below.
    config = replace(default, recycle_after=10**9)
    pool = ExtractorPool(config)

    def in_process(path: Path) -> list[TextBlock]:
        return extract(path, MARKDOWN, limits)

    def pooled(path: Path) -> list[TextBlock]:
        return pool.extract(path, MARKDOWN, limits)

    try:
        assert all(in_process(p) == pooled(p) for p in paths[:50])  # also the warm-up
        best: dict[tuple[str, int], tuple[float, float]] = {}
        for _ in range(2):
            for threads in (1, 16):
                for side, call, children in (
                    ("in process", in_process, list),
                    ("pool", pooled, pool.pids),
                ):
                    measured = timed(paths, call, threads, children)
                    key = (side, threads)
                    best[key] = min(best.get(key, measured), measured)
        # A replacement child: started, parsers imported, first file answered.
        starts = []
        for _ in range(3):
            fresh = ExtractorPool(replace(config, size=1))
            cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            fresh.extract(paths[0], MARKDOWN, limits)
            wall = time.perf_counter() - started
            fresh.close()
            cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (
                cpu_before.ru_utime + cpu_before.ru_stime
            )
            starts.append((wall, cpu))
    finally:
        pool.close()
        shutil.rmtree(work, ignore_errors=True)
    start_wall = min(wall for wall, _ in starts)
    start_cpu = min(cpu for _, cpu in starts)

    n = len(paths)
    lines = [
        f"## extract pool: per-document overhead — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"machine: {machine()}",
        f"load average at the end: {os.getloadavg()[0]:.1f} (the machine is shared)",
        f"command: `.venv/bin/python -m bench.extract_pool.run --docs {args.docs}`",
        f"- documents: {n} SciFact abstracts as Markdown (mean {mean_size:.0f} bytes); pool of "
        f"{config.size} children; best of 2 runs",
    ]
    for threads in (1, 16):
        (inside, inside_cpu) = best[("in process", threads)]
        (through, through_cpu) = best[("pool", threads)]
        lines.append(
            f"- {threads} caller{'s' if threads > 1 else ''}: in process {inside:.2f} s "
            f"({1000 * inside / n:.2f} ms/doc, {1000 * inside_cpu / n:.2f} CPU-ms/doc), through "
            f"the pool {through:.2f} s ({1000 * through / n:.2f} ms/doc, "
            f"{1000 * through_cpu / n:.2f} CPU-ms/doc, worker and children): overhead "
            f"**{1000 * (through - inside) / n:+.2f} ms/doc wall, "
            f"{1000 * (through_cpu - inside_cpu) / n:+.2f} CPU-ms/doc**"
        )
    lines.append(
        f"- starting a child (spawn, import the parsers, first file): {start_wall:.2f} s wall, "
        f"{start_cpu:.2f} CPU-s (best of 3); replaced every {default.recycle_after} files: "
        f"**{1000 * start_cpu / default.recycle_after:.2f} CPU-ms/doc amortised**"
    )
    report = "\n".join([*lines, ""])
    record(report, save=not args.no_record)


if __name__ == "__main__":
    main()
