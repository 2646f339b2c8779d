"""Explaining a failed run: the common-error registry first, the LLM only when nothing matches.

The error is read from the run's stderr with the language's declared ``error_regex`` (the
last matching line: a type and a message); a run the sandbox stopped at a limit gets the
limit as its type (``TimeLimitExceeded``, ``CpuTimeLimitExceeded``). Registry patterns are
written by tenant admins, so each is applied with the ``regex`` module's timeout: a
catastrophic pattern costs a few milliseconds and is skipped, never a stuck worker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import regex
import structlog

from haven.db.tables import ErrorPattern
from haven.llm_client import AsyncLlmClient, Completed, Delta, LlmRejected, LlmUnavailable, Sampling
from haven.sandbox import Language, SandboxResult

log = structlog.get_logger("haven.runs.explain")

_MATCH_SECONDS = 0.05
_MATCHING_SECONDS = 2.0
_MESSAGE_CHARS = 1000
_CODE_CHARS = 20_000
LIMIT_TYPES = {"wall": "TimeLimitExceeded", "cpu": "CpuTimeLimitExceeded"}


@dataclass(frozen=True)
class ErrorSignature:
    error_type: str | None
    message: str
    # The lines the LLM sees (the traceback's end).
    excerpt: str


def failed(result: SandboxResult) -> bool:
    return result.exit_code != 0 or result.limit_hit is not None


def signature(result: SandboxResult, language: Language) -> ErrorSignature:
    stderr = result.stderr.decode("utf-8", "replace")
    excerpt = stderr[-2000:]
    if result.limit_hit in LIMIT_TYPES:
        return ErrorSignature(LIMIT_TYPES[result.limit_hit], "", excerpt)
    pattern = regex.compile(language.error_regex, regex.MULTILINE)
    for line in reversed(stderr.splitlines()[-200:]):
        try:
            found = pattern.fullmatch(line.strip()[:_MESSAGE_CHARS], timeout=_MATCH_SECONDS)
        except TimeoutError:
            continue
        if found:
            message = found.groupdict().get("message") or ""
            return ErrorSignature(found.group("type"), message.strip(), excerpt)
    if result.signal is not None:
        return ErrorSignature(result.signal, "", excerpt)
    return ErrorSignature(None, "", excerpt)


def _matches(pattern: str | None, text: str) -> bool:
    if pattern is None:
        return True
    try:
        return regex.search(pattern, text, timeout=_MATCH_SECONDS) is not None
    except (TimeoutError, regex.error):
        log.warning("runs.pattern_skipped", pattern=pattern[:100])
        return False


def match(
    candidates: Sequence[ErrorPattern], found: ErrorSignature, code: str
) -> ErrorPattern | None:
    """The first candidate (they come in matching order) whose type, message and code
    patterns all match; within ``_MATCHING_SECONDS`` in all, however many patterns a
    tenant wrote."""
    deadline = time.monotonic() + _MATCHING_SECONDS
    for entry in candidates:
        if time.monotonic() > deadline:
            log.warning("runs.matching_budget_spent", candidates=len(candidates))
            return None
        if entry.error_type is not None and entry.error_type != found.error_type:
            continue
        if entry.error_type is None and found.error_type is None and entry.code_regex is None:
            continue  # a catch-all needs something to recognise
        if not _matches(entry.message_regex, found.message[:_MESSAGE_CHARS]):
            continue
        if not _matches(entry.code_regex, code[:_CODE_CHARS]):
            continue
        return entry
    return None


def from_registry(entry: ErrorPattern, found: ErrorSignature) -> dict[str, Any]:
    return {
        "source": "registry",
        "entry_id": str(entry.id),
        "shared": entry.tenant_id is None,
        "error_type": found.error_type,
        "title": entry.title,
        "text": entry.explanation,
        "hint": entry.hint,
    }


_SYSTEM = (
    "You are a patient programming teacher. A learner's program failed. Explain in plain "
    "words, in at most five sentences, what the error means and the most likely cause in "
    "their code, then give one concrete hint to fix it. Do not rewrite the whole program."
)


def prompt(language: str, code: str, found: ErrorSignature) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": _SYSTEM},
        {
            "role": "user",
            "content": (
                f"Language: {language}\n\nProgram:\n```\n{code[:4000]}\n```\n\n"
                f"Error output (end):\n```\n{found.excerpt[-1500:]}\n```"
            ),
        },
    ]


async def _complete(
    llm_url: str, messages: list[dict[str, str]], max_tokens: int, seconds: float
) -> tuple[str, Completed | None]:
    client = AsyncLlmClient(llm_url, timeout=seconds)
    parts: list[str] = []
    done: Completed | None = None
    try:
        async with asyncio.timeout(seconds):
            async for event in client.stream_chat(
                messages, Sampling(max_tokens=max_tokens, temperature=0.2, seed=0)
            ):
                if isinstance(event, Delta):
                    parts.append(event.text)
                else:
                    done = event
    finally:
        await client.aclose()
    return "".join(parts).strip(), done


def from_llm(
    llm_url: str,
    language: str,
    code: str,
    found: ErrorSignature,
    *,
    max_tokens: int,
    timeout: float,
) -> dict[str, Any]:
    """Ask the generation service; a missing answer says why instead of failing the run."""
    base: dict[str, Any] = {"source": "llm", "entry_id": None, "error_type": found.error_type}
    try:
        text, done = asyncio.run(
            _complete(llm_url, prompt(language, code, found), max_tokens, timeout)
        )
    except (LlmUnavailable, LlmRejected, TimeoutError) as exc:
        log.warning("runs.llm_failed", error=str(exc)[:300])
        return {
            **base,
            "source": "none",
            "text": "No explanation: the error is not in the registry and the language model "
            "did not answer.",
        }
    usage = (
        {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens}
        if done
        else {}
    )
    return {
        **base,
        "title": "Explained by the language model",
        "text": text or "(the language model gave no text)",
        "hint": "",
        "usage": usage,
    }
