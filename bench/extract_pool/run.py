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
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from bench.common import machine
from bench.ingest.run import corpus_files
from workers.ingest.extract import MARKDOWN, ExtractLimits, TextBlock, extract
from workers.ingest.pool import ExtractorPool, PoolConfig

RESULTS = Path(__file__).resolve().parents[1] / "RESULTS.md"


def timed(paths: list[Path], extract_one: Callable[[Path], list[TextBlock]], threads: int) -> float:
    started = time.perf_counter()
    if threads == 1:
        for path in paths:
            extract_one(path)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(extract_one, paths))
    return time.perf_counter() - started


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
    config = PoolConfig()
    pool = ExtractorPool(config)

    def in_process(path: Path) -> list[TextBlock]:
        return extract(path, MARKDOWN, limits)

    def pooled(path: Path) -> list[TextBlock]:
        return pool.extract(path, MARKDOWN, limits)

    try:
        assert all(in_process(p) == pooled(p) for p in paths[:50])  # also the warm-up
        best: dict[tuple[str, int], float] = {}
        for _ in range(2):
            for threads in (1, 16):
                for side, call in (("in process", in_process), ("pool", pooled)):
                    seconds = timed(paths, call, threads)
                    key = (side, threads)
                    best[key] = min(best.get(key, seconds), seconds)
    finally:
        pool.close()
        shutil.rmtree(work, ignore_errors=True)

    n = len(paths)
    lines = [
        f"## extract pool: per-document overhead — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"machine: {machine()}",
        f"command: `.venv/bin/python -m bench.extract_pool.run --docs {args.docs}`",
        f"- documents: {n} SciFact abstracts as Markdown (mean {mean_size:.0f} bytes); pool of "
        f"{config.size} children (recycled every {config.recycle_after} files); best of 2 runs",
    ]
    for threads in (1, 16):
        inside, through = best[("in process", threads)], best[("pool", threads)]
        lines.append(
            f"- {threads} caller{'s' if threads > 1 else ''}: in process {inside:.2f} s "
            f"({1000 * inside / n:.2f} ms/doc), through the pool {through:.2f} s "
            f"({1000 * through / n:.2f} ms/doc): overhead "
            f"**{1000 * (through - inside) / n:+.2f} ms/doc**, "
            f"**throughput ratio pool/in-process {inside / through:.2f}**"
        )
    report = "\n".join([*lines, ""])
    print(report)
    if not args.no_record:
        with RESULTS.open("a", encoding="utf-8") as results:
            results.write("\n" + report)


if __name__ == "__main__":
    main()
