"""Benchmark: the analyze pipeline (map-reduce summary of one long document) against raw
llama.cpp doing the same token work, in one script.

A whole Haven runs on loopback (emb, llm and the all-in-one API + worker, as processes, like
``bench/answers``) with the bundled chat model (SmolLM2-135M-Instruct behind alias ``chat``).
One long document, many SciFact abstracts concatenated, is uploaded, ingested, and summarised
by ``POST /api/v1/analyses``; the wall time runs from the request to ``ready``. The usage
ledger then says what every llm call of the analysis cost (prompt and completion tokens).

The baseline loads the same GGUF in this process with llama.cpp (same context and threads)
and replays the same calls: for each, a prompt of the same length (tokens of the document)
and exactly as many generated tokens, greedy. Both rates are total tokens (prompt +
completion) per second; the ratio is pipeline / raw (goal ≥ 0.9). Also reported: the wall
time per 100k input tokens (the document's tokens in the model's tokenizer).

    .venv/bin/python -m bench.analyze.run [--abstracts 12] [--ctx 1024] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import llama_cpp
from sqlalchemy import select

from bench.common import machine, record
from haven.db.engine import make_engine, make_session_factory, transaction
from haven.db.tables import UsageEntry
from models.defaults import DEFAULT_LLM, publish_default_llm
from tests.e2e.helpers import upload, wait_for, wait_job
from tests.fixtures.api import bootstrap_platform_admin, create_tenant_with_admin
from tests.fixtures.rag_stack import rag_stack
from tests.fixtures.services import drop_database, migrated_database, start_moto

CORPUS = Path("/work/shared/eval/scifact/corpus.jsonl")


def document(abstracts: int) -> str:
    parts = []
    with CORPUS.open(encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            parts.append(f"{row['title']}\n\n{row['text']}")
            if len(parts) >= abstracts:
                break
    return "\n\n".join(parts)


def raw_model(ctx: int, threads: int) -> llama_cpp.Llama:
    return llama_cpp.Llama(
        model_path=str(DEFAULT_LLM.locate()),
        n_ctx=ctx,
        # As the llm service sets them (llm/engine.py): llama.cpp's own default for the
        # prompt's threads is every CPU.
        n_threads=threads,
        n_threads_batch=threads,
        n_batch=512,
        verbose=False,
    )


def raw_replay(
    model: llama_cpp.Llama, text: str, calls: list[tuple[int, int]]
) -> tuple[float, int]:
    """The same calls on llama.cpp in-process: (seconds, tokens processed)."""
    corpus = model.tokenize(text.encode(), add_bos=False)
    seconds = 0.0
    processed = 0
    offset = 0
    for prompt_tokens, completion_tokens in calls:
        prompt = [model.token_bos()]
        while len(prompt) < prompt_tokens:
            take = corpus[offset : offset + prompt_tokens - len(prompt)]
            offset = (offset + len(take)) % max(len(corpus) - 1, 1)
            prompt.extend(take or corpus[:1])
        model.reset()
        started = time.perf_counter()
        generated = 0
        if completion_tokens > 0:
            for _ in model.generate(prompt, temp=0.0, reset=True):
                generated += 1
                if generated >= completion_tokens:
                    break
        else:
            model.eval(prompt)
        seconds += time.perf_counter() - started
        processed += len(prompt) + generated
    return seconds, processed


@dataclass(frozen=True)
class Round:
    wall: float
    in_llm: float
    calls: list[tuple[int, int]]
    raw_seconds: float
    raw_tokens: int
    body: dict[str, Any]

    @property
    def tokens(self) -> int:
        return sum(p + c for p, c in self.calls)

    @property
    def ratio(self) -> float:
        return (self.tokens / self.wall) / (self.raw_tokens / self.raw_seconds)


def analyse(stack: Any, owner: Any, document_id: str, *, force: bool) -> tuple[float, Any]:
    """One summary of the document through the API: (seconds to ready, the analysis)."""
    started = time.perf_counter()
    created = stack.client.post(
        "/api/v1/analyses",
        json={"document_ids": [document_id], "kind": "summary", "force": force},
        headers=owner.headers,
    )
    assert created.status_code in (200, 201), created.text
    analysis_id = created.json()["id"]

    def current() -> Any:
        return stack.client.get(f"/api/v1/analyses/{analysis_id}", headers=owner.headers).json()

    wait_for(lambda: current()["state"] in ("ready", "failed"), 3600, "the analysis", every=0.2)
    wall = time.perf_counter() - started
    body = current()
    assert body["state"] == "ready", body
    return wall, body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--abstracts", type=int, default=12)
    parser.add_argument("--ctx", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--map-tokens", type=int, default=48)
    parser.add_argument("--reduce-tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    # A TERM (timeout, Ctrl-C from a supervisor) still stops the stack's processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    text = document(args.abstracts)
    work = Path(tempfile.mkdtemp(prefix="haven-bench-analyze-"))
    moto = start_moto(work)
    s3 = next(moto)
    database_name = f"haven_bench_analyze_{os.getpid()}"
    database_url = migrated_database(database_name)
    try:
        with rag_stack(
            database_url,
            s3,
            work,
            publish_default_llm,
            HAVEN_LLM_CTX=str(args.ctx),
            HAVEN_LLM_THREADS=str(args.threads),
            HAVEN_LLM_QUEUE="4",
            HAVEN_ANALYZE_MAP_TOKENS=str(args.map_tokens),
            HAVEN_ANALYZE_REDUCE_TOKENS=str(args.reduce_tokens),
            HAVEN_JOB_LEASE_SECONDS="60",
            # A loaded machine generates slowly: no call is cut short.
            HAVEN_LLM_REQUEST_TIMEOUT_SECONDS="1800",
            HAVEN_LOG_LEVEL="WARNING",
        ) as stack:
            engine = make_engine(stack.settings)
            factory = make_session_factory(engine)
            admin = bootstrap_platform_admin(factory, stack.client)
            owner = create_tenant_with_admin(stack.client, admin)
            accepted = upload(stack, owner, "scifact.txt", text.encode())
            wait_job(stack, owner, accepted["job_id"], {"ready"}, timeout=900)
            load_before = os.getloadavg()
            document_id = accepted["document"]["id"]
            model = raw_model(args.ctx, args.threads)
            rounds: list[Round] = []
            seen = 0
            for number in range(args.rounds):
                # Each round: the analysis through Haven (forced after the first, so every
                # step is generated again), then the same calls on llama.cpp in-process. The
                # llm service is idle while the baseline runs; alternating the two puts a
                # shared machine's load swings on both sides alike.
                wall, body = analyse(stack, owner, document_id, force=number > 0)
                with transaction(factory) as session:
                    rows = session.execute(
                        select(
                            UsageEntry.id,
                            UsageEntry.prompt_tokens,
                            UsageEntry.completion_tokens,
                            UsageEntry.latency_ms,
                        )
                        .where(
                            UsageEntry.tenant_id == owner.tenant_id,
                            UsageEntry.kind == "analyze",
                            UsageEntry.id > seen,
                        )
                        .order_by(UsageEntry.id)
                    ).all()
                seen = max([seen, *(int(r[0]) for r in rows)])
                calls = [(int(p), int(c)) for _, p, c, _ in rows]
                in_llm = sum(int(ms or 0) for *_, ms in rows) / 1000
                raw_seconds, raw_tokens = raw_replay(model, text, calls)
                rounds.append(Round(wall, in_llm, calls, raw_seconds, raw_tokens, body))
                print(
                    f"round {number + 1}: pipeline {wall:.1f} s, raw {raw_seconds:.1f} s, "
                    f"ratio {rounds[-1].ratio:.2f}, load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
            engine.dispose()
            load_after = os.getloadavg()
    finally:
        drop_database(database_name)
        next(moto, None)
        shutil.rmtree(work, ignore_errors=True)

    first = rounds[0]
    result = first.body["result"]
    ratios = sorted(r.ratio for r in rounds)
    median = ratios[len(ratios) // 2]
    input_tokens = int(result["input_tokens"])
    report = "\n".join(
        [
            f"## analyze — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            f"machine: {machine()}; load average {load_before[0]:.1f} before, "
            f"{load_after[0]:.1f} after",
            f"command: `.venv/bin/python -m bench.analyze.run --abstracts {args.abstracts}"
            f" --ctx {args.ctx} --threads {args.threads} --map-tokens {args.map_tokens}"
            f" --reduce-tokens {args.reduce_tokens} --rounds {args.rounds}`",
            f"- document: {args.abstracts} SciFact abstracts, {input_tokens} tokens "
            f"(SmolLM2 tokenizer); summary in {result['parts']} parts, "
            f"{result['steps'] - result['parts']} reduces, {len(first.calls)} llm calls, "
            f"{first.tokens} tokens processed",
            *(
                f"- round {n}: pipeline {r.wall:.1f} s from request to ready "
                f"({r.tokens / r.wall:.1f} tokens/s; {r.in_llm:.1f} s inside llm calls, "
                f"{r.wall - r.in_llm:.1f} s outside: queue, extraction, tokenizing, stored "
                f"steps, artifact); raw llama.cpp, same calls: {r.raw_seconds:.1f} s "
                f"({r.raw_tokens / r.raw_seconds:.1f} tokens/s); ratio {r.ratio:.2f}"
                for n, r in enumerate(rounds, 1)
            ),
            f"- ratio pipeline / raw, median of {len(rounds)} alternating rounds: {median:.2f}"
            " (goal ≥ 0.9)",
            f"- wall time per 100k input tokens: {first.wall / input_tokens * 100_000:.0f} s",
            "",
        ]
    )
    record(report, save=not args.no_record)


if __name__ == "__main__":
    main()
