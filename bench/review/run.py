"""Benchmark: one code review of a 2,000-line Python submission with the bundled chat model.

The llm service runs in this process's threads (as in the llm tests) with the bundled default
model (SmolLM2-135M-Instruct) published through the registry to a moto S3 server started here.
The review's steps run as the worker runs them — safe extraction, diff, ruff + bandit, the LLM
passes within the model's context, the log pass — and each is timed. Printed and appended to
``bench/RESULTS.md``: wall time, the share of time in linters, the LLM and the rest, llm calls
and tokens, and the coverage (files reviewed fully, partly, skipped).

    .venv/bin/python -m bench.review.run [--files 20] [--lines 100] [--ctx 4096] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.common import machine, record
from haven.archives import extract, inspect
from haven.review_settings import ReviewSettings
from models.defaults import DEFAULT_LLM, publish_bundled_llm
from models.store import registry_from_settings
from tests.fixtures import review_archives as z
from tests.fixtures.llm_service import ALIAS, make_settings, running, wait_loaded
from tests.fixtures.services import start_moto
from workers.review.diffing import diff_trees
from workers.review.handler import llm_passes, log_pass
from workers.review.linters import analyse
from workers.review.llm import LlmSession

MODULE = '''"""Module {i}: inventory helpers."""
import json
import os


class Store{i}:
    def __init__(self, path):
        self.path = path
        self.items = {{}}

    def load(self):
        with open(self.path) as handle:
            self.items = json.load(handle)
        return self.items
'''


def module(i: int, lines: int) -> str:
    body = MODULE.format(i=i)
    n = 0
    while body.count("\n") < lines - 6:
        body += (
            f"\n\ndef total_{i}_{n}(values, factor={n + 1}):\n"
            f"    result = 0\n"
            f"    for value in values:\n"
            f"        result += value * factor\n"
            f"    return result\n"
        )
        n += 1
    if i % 4 == 0:
        body += "\n\ndef risky(text):\n    return eval(text)\n"
    return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--lines", type=int, default=100)
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--answer-tokens", type=int, default=256)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    files = {f"inventory/mod{i}.py": module(i, args.lines) for i in range(args.files)}
    total_lines = sum(text.count("\n") + 1 for text in files.values())
    settings = ReviewSettings(answer_tokens=args.answer_tokens, max_component_calls=8)
    with (
        tempfile.TemporaryDirectory() as tmp,
        contextlib.contextmanager(start_moto)(Path(tmp)) as s3,
    ):
        work = Path(tmp)
        llm_settings = make_settings(s3, work / "cache", llm_threads=args.threads, llm_ctx=args.ctx)
        registry = registry_from_settings(llm_settings)
        manifest = publish_bundled_llm(registry, DEFAULT_LLM)
        registry.set_alias(ALIAS, manifest.name, manifest.version)
        with running(llm_settings) as url:
            assert wait_loaded(url).status_code == 200
            timings: dict[str, float] = {}
            started = time.perf_counter()

            t = time.perf_counter()
            archive = work / "new.zip"
            archive.write_bytes(z.zip_of(files))
            logs_archive = work / "logs.zip"
            logs_archive.write_bytes(z.run_logs(repeats=50))
            new, logs = work / "new", work / "logs"
            new.mkdir()
            logs.mkdir()
            for path, tree, part in ((archive, new, "new_zip"), (logs_archive, logs, "logs_zip")):
                limits = settings.archive_limits(part)
                extract(path, inspect(path, part, limits), tree, limits)
            changes = diff_trees(None, new)
            timings["extract+diff"] = time.perf_counter() - t

            t = time.perf_counter()
            static = analyse(
                new, changes, timeout=60, memory_mb=1024, only_changed_lines=True, max_findings=200
            )
            timings["linters"] = time.perf_counter() - t

            llm = LlmSession(url, 600, 1.0, 300, checkpoint=lambda: None)
            t = time.perf_counter()
            passes = llm_passes(llm, changes, static, settings)
            report = log_pass(llm, logs, settings)
            llm.close()
            timings["llm passes (incl. log grouping)"] = time.perf_counter() - t
            wall = time.perf_counter() - started

    llm_seconds = sum(c.seconds for c in llm.calls)
    timings = {
        "extract+diff": timings["extract+diff"],
        "linters": timings["linters"],
        "llm (generation)": llm_seconds,
        "rest (token counting, log grouping, parsing)": timings["llm passes (incl. log grouping)"]
        - llm_seconds,
    }
    coverage: dict[str, int] = {}
    for c in passes["coverage"]:
        coverage[c.status] = coverage.get(c.status, 0) + 1
    prompt = sum(c.prompt_tokens for c in llm.calls)
    completion = sum(c.completion_tokens for c in llm.calls)
    load = os.getloadavg()
    lines = [
        f"### bench/review — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {machine()}; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}.",
        f"Submission: {args.files} Python files, {total_lines} lines, all new; run logs with a "
        f"traceback repeated 50 times. Model: {DEFAULT_LLM.name} (ctx {args.ctx}, "
        f"{args.threads} threads, answers up to {args.answer_tokens} tokens).",
        "",
        f"Wall time {wall:.1f} s; llm calls {len(llm.calls)}, prompt tokens {prompt}, "
        f"answer tokens {completion}; findings: {len(static.findings)} from linters, "
        f"{len(passes['components']['findings'])} parsed from the model; log groups "
        f"{report['group_count']}; coverage {coverage}.",
        "",
        "| step | seconds | share |",
        "|---|---:|---:|",
    ]
    for name, seconds in timings.items():
        lines.append(f"| {name} | {seconds:.2f} | {100 * seconds / wall:.0f} % |")
    text = "\n".join(lines) + "\n"
    record(text, save=not args.no_record)


if __name__ == "__main__":
    main()
