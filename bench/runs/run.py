"""Sandbox start-up overhead: the same snippet run in a bubblewrap box (haven/sandbox) and
with plain ``subprocess``, interleaved in one run so both see the same machine load; then
runs per second through the sandbox, one at a time and from several threads.

    .venv/bin/python -m bench.runs.run [--runs 200] [--threads 2] [--no-record]

Prints p50/p99 wall time per run for each, the difference (the sandbox's overhead) and the
load average, and appends the result to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from bench.common import machine, record
from haven.sandbox import RunLimits, Sandbox, SandboxSettings

SNIPPET = b"print(sum(i * i for i in range(1000)))\n"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    sandbox = Sandbox(SandboxSettings())
    ready = sandbox.readiness(fresh=True)
    if not ready.ok:
        raise SystemExit(f"no sandbox here: {ready.reason}")
    python = sandbox.settings.languages["python"]
    limits = RunLimits()
    expected = b"332833500\n"

    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "main.py"
        script.write_bytes(SNIPPET)
        plain_argv = [a.replace("{file}", str(script)) for a in python.command]
        boxed: list[float] = []
        plain: list[float] = []
        load_before = os.getloadavg()
        for _ in range(args.runs):
            started = time.perf_counter()
            result = sandbox.run_language(python, {"main.py": SNIPPET}, limits)
            boxed.append(time.perf_counter() - started)
            assert result.stdout == expected, result.report()
            started = time.perf_counter()
            done = subprocess.run(plain_argv, capture_output=True, check=True, cwd=folder)
            plain.append(time.perf_counter() - started)
            assert done.stdout == expected

    started = time.perf_counter()
    for _ in range(args.runs // 2):
        sandbox.run_language(python, {"main.py": SNIPPET}, limits)
    serial_rate = (args.runs // 2) / (time.perf_counter() - started)
    started = time.perf_counter()
    with ThreadPoolExecutor(args.threads) as pool:
        list(
            pool.map(
                lambda _: sandbox.run_language(python, {"main.py": SNIPPET}, limits),
                range(args.runs),
            )
        )
    threaded_rate = args.runs / (time.perf_counter() - started)
    load_after = os.getloadavg()

    ms = 1000.0
    overhead = [b - p for b, p in zip(boxed, plain, strict=True)]

    def row(label: str, values: list[float]) -> str:
        p50, p99 = statistics.median(values) * ms, pct(values, 0.99) * ms
        return f"| {label} | {p50:.1f} ms | {p99:.1f} ms | {statistics.fmean(values) * ms:.1f} ms |"

    lines = [
        f"## runs — sandbox start-up overhead — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"machine: {machine()}; load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after (shared with other sessions' tests and benchmarks)",
        f"command: `.venv/bin/python -m bench.runs.run --runs {args.runs} "
        f"--threads {args.threads}`; snippet `{SNIPPET.decode().strip()}` with Debian's "
        "python3, the two interleaved",
        "",
        "| per run (wall) | p50 | p99 | mean |",
        "|---|---|---|---|",
        row("plain subprocess", plain),
        row("bubblewrap sandbox", boxed),
        row("overhead (sandbox minus plain, same iteration)", overhead),
        "",
        f"runs per second through the sandbox: {serial_rate:.1f} one at a time, "
        f"{threaded_rate:.1f} from {args.threads} threads",
        "",
    ]
    report = "\n".join(lines)
    record(report, save=not args.no_record)


if __name__ == "__main__":
    main()
