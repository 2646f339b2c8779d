"""The review's LLM passes, within the model's context as its own tokenizer counts it.

Budget (PR-Agent's rule): context - prompt - an answer reserve. The changed files' hunks (a
little context around each change) are sent whole when everything fits; otherwise deletion-only
hunks are dropped, files are added largest-first into at most ``max_component_calls`` calls,
a file too large for one call is sent in part, and what is left is listed as skipped for
budget — never silently (``coverage``).

Passes: architecture (the tree of changes), components (per group of files: findings as JSON
lines), synthesis (the components' notes and the linters' findings: a summary). The model's
answers are parsed tolerantly: JSON objects wherever they appear, ``path:line: message`` lines,
and whatever cannot be parsed is kept as text, never dropped.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from haven.budget import Reservation, TokenBudget
from workers.review.diffing import ChangeSet, FileChange

SYSTEM = (
    "You are a careful senior engineer reviewing a student's code submission. "
    "Be specific and brief; cite files and line numbers."
)
FINDING_FORMAT = (
    'Answer with one JSON object per line: {"path": "...", "line": N, '
    '"severity": "error|warning|info", "message": "..."}'
)
MARGIN_TOKENS = 16


class LlmBusy(Exception):
    pass


class LlmFailed(Exception):
    pass


@dataclass
class Call:
    purpose: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float


@dataclass
class LlmSession:
    """One review's calls to llm: counts tokens, generates, waits out a busy service (429/503
    with ``Retry-After``) without failing the job, and calls ``checkpoint`` between waits and
    calls so a cancel stops the review within one call."""

    base_url: str
    timeout: float
    retry_seconds: float
    max_wait_seconds: float
    checkpoint: Callable[[], None]
    # The tenant's token budget: each call reserves its prompt and answer tokens first and
    # settles to what llm reports (the usage ledger row is written by the settle).
    budget: TokenBudget | None = None
    tenant_id: uuid.UUID | None = None
    request_id: str | None = None
    calls: list[Call] = field(default_factory=list)
    context_length: int = 0
    model: str = ""

    def __post_init__(self) -> None:
        self._client = httpx.Client(
            base_url=self.base_url, timeout=httpx.Timeout(self.timeout, connect=5.0)
        )

    def close(self) -> None:
        self._client.close()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        waited = 0.0
        pause = self.retry_seconds
        while True:
            self.checkpoint()
            try:
                response = self._client.post(path, json=body)
            except httpx.HTTPError as exc:
                response = None
                error = f"llm unreachable: {exc}"
            if response is not None and response.status_code < 400:
                return dict(response.json())
            if response is not None and response.status_code not in (429, 502, 503, 504):
                raise LlmFailed(f"llm refused the request ({response.status_code})")
            if response is not None:
                error = f"llm busy ({response.status_code})"
                with contextlib.suppress(ValueError):
                    pause = max(pause, float(response.headers.get("Retry-After", pause)))
            if waited + pause > self.max_wait_seconds:
                raise LlmBusy(f"{error}; waited {waited:.0f} s")
            time.sleep(pause)
            waited += pause
            pause = min(pause * 2, 60.0)

    def count(self, texts: list[str]) -> list[int]:
        data = self._post("/tokenize", {"texts": texts})
        self.context_length = int(data["context_length"])
        self.model = f"{data.get('name') or data.get('model')}/{data.get('version')}"
        return [int(n) for n in data["counts"]]

    def prompt_tokens(self, prompt: str) -> int:
        """The rendered prompt's tokens (system message and chat template included)."""
        data = self._post("/tokenize", {"texts": [], "messages": _messages(prompt)})
        return int(data["prompt_tokens"])

    def complete(self, purpose: str, prompt: str, max_tokens: int) -> str:
        held: Reservation | None = None
        if self.budget is not None and self.tenant_id is not None:
            held = self.budget.reserve(
                self.tenant_id,
                self.prompt_tokens(prompt) + max_tokens,
                kind="review",
                request_id=self.request_id,
            )
        started = time.monotonic()
        try:
            data = self._post(
                "/v1/chat/completions",
                {
                    "messages": _messages(prompt),
                    "max_tokens": max_tokens,
                    "temperature": 0.0,
                    "seed": 7,
                    "stream": False,
                },
            )
        except BaseException:
            if held is not None and self.budget is not None:
                self.budget.release(held)  # nothing was generated: nothing is charged
            raise
        usage = data.get("usage") or {}
        if held is not None and self.budget is not None:
            self.budget.settle(
                held,
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
                latency_ms=int((time.monotonic() - started) * 1000),
                kind="review",
            )
        self.calls.append(
            Call(
                purpose,
                int(usage.get("prompt_tokens", 0)),
                int(usage.get("completion_tokens", 0)),
                round(time.monotonic() - started, 3),
            )
        )
        choices = data.get("choices") or [{}]
        return str((choices[0].get("message") or {}).get("content") or "").strip()


def _messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]


# --- budget ---------------------------------------------------------------------------------


@dataclass
class Coverage:
    path: str
    status: str  # reviewed | partly | skipped
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {"path": self.path, "review": self.status}
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass
class Batch:
    text: str
    tokens: int
    paths: list[str]


def file_block(change: FileChange, *, keep_deletions: bool) -> list[str]:
    """The file's hunks as text blocks (one per hunk, new-side line numbers in the gutter),
    with the file's header on the first."""
    blocks = []
    for hunk in change.hunks:
        if not keep_deletions and hunk.deletion_only:
            continue
        number = hunk.new_start
        lines = []
        for line in hunk.lines:
            if line.startswith("-"):
                lines.append(f"      {line}")
            else:
                lines.append(f"{number:>5} {line}")
                number += 1
        blocks.append("\n".join(lines))
    if blocks:
        blocks[0] = f"### {change.path} ({change.status})\n" + blocks[0]
    return blocks


def plan(
    changes: ChangeSet,
    count: Callable[[list[str]], list[int]],
    budget: int,
    max_calls: int,
) -> tuple[list[Batch], list[Coverage]]:
    """Pack the changed files into at most ``max_calls`` prompts of ``budget`` tokens."""
    coverage: list[Coverage] = []
    candidates: list[FileChange] = []
    for change in changes.files:
        if change.status == "deleted":
            coverage.append(Coverage(change.path, "skipped", "deleted (listed by name)"))
        elif change.binary:
            coverage.append(Coverage(change.path, "skipped", "binary file"))
        elif change.generated:
            coverage.append(Coverage(change.path, "skipped", "generated, vendored or lock file"))
        elif not change.hunks:
            coverage.append(Coverage(change.path, "skipped", "no changed text"))
        else:
            candidates.append(change)
    if not candidates or budget <= 0:
        coverage += [Coverage(c.path, "skipped", "budget") for c in candidates]
        return [], coverage

    whole = [file_block(c, keep_deletions=True) for c in candidates]
    whole_counts = count(["\n".join(b) for b in whole])
    if sum(whole_counts) + 2 * len(candidates) <= budget:
        text = "\n\n".join("\n".join(b) for b in whole)
        coverage += [Coverage(c.path, "reviewed") for c in candidates]
        return [Batch(text, sum(whole_counts), [c.path for c in candidates])], coverage

    # Not everything fits: no deletion-only hunks, largest files first, hunk by hunk.
    blocks = [file_block(c, keep_deletions=False) for c in candidates]
    flat = [b for file_blocks in blocks for b in file_blocks]
    flat_counts = iter(count(flat)) if flat else iter(())
    sized = [[(b, next(flat_counts)) for b in file_blocks] for file_blocks in blocks]
    sized = [_split_large(pairs, count, budget) for pairs in sized]
    order = sorted(range(len(candidates)), key=lambda i: -sum(n for _, n in sized[i]))
    batches: list[Batch] = []
    current: list[str] = []
    current_tokens = 0
    current_paths: list[str] = []

    def close() -> None:
        nonlocal current, current_tokens, current_paths
        if current:
            batches.append(Batch("\n\n".join(current), current_tokens, current_paths))
        current, current_tokens, current_paths = [], 0, []

    for i in order:
        change, hunks = candidates[i], sized[i]
        if not hunks:
            coverage.append(Coverage(change.path, "skipped", "deletions only"))
            continue
        sent = 0
        for text, tokens in hunks:
            if tokens + 2 > budget:
                continue  # a single hunk larger than a whole call
            if current_tokens + tokens + 2 > budget:
                close()
                if len(batches) >= max_calls:
                    break
            current.append(text)
            current_tokens += tokens + 2
            if change.path not in current_paths:
                current_paths.append(change.path)
            sent += 1
        if sent == len(hunks):
            coverage.append(Coverage(change.path, "reviewed"))
        elif sent:
            coverage.append(
                Coverage(change.path, "partly", f"{sent} of {len(hunks)} hunks: budget")
            )
        else:
            coverage.append(Coverage(change.path, "skipped", "budget"))
        if len(batches) >= max_calls:
            # Everything after this file is listed as skipped.
            done = {c.path for c in coverage}
            coverage += [
                Coverage(candidates[j].path, "skipped", "budget")
                for j in order
                if candidates[j].path not in done
            ]
            current = []
            break
    close()
    return batches[:max_calls], coverage


def _split_large(
    pairs: list[tuple[str, int]], count: Callable[[list[str]], list[int]], budget: int
) -> list[tuple[str, int]]:
    """Hunks larger than a whole call, cut at line boundaries into pieces that fit."""
    out: list[tuple[str, int]] = []
    for text, tokens in pairs:
        if tokens + 2 <= budget:
            out.append((text, tokens))
            continue
        lines = text.split("\n")
        pieces = -(-tokens // max(1, int(budget * 0.8)))
        size = max(1, -(-len(lines) // pieces))
        parts = ["\n".join(lines[i : i + size]) for i in range(0, len(lines), size)]
        out += list(zip(parts, count(parts), strict=True))
    return out


# --- tolerant parsing of the model's findings -----------------------------------------------

LINE_FINDING = re.compile(r"^\s*[-*]?\s*`?([\w./-]+\.\w+)`?[:\s]+(?:line\s*)?(\d+)[:\s-]+(.+)$")
SEVERITIES = {"error", "warning", "info"}


def _objects(text: str) -> list[tuple[int, int, Any]]:
    """Every JSON value that parses at a ``{`` or ``[`` in ``text``: (start, end, value)."""
    decoder = json.JSONDecoder()
    found = []
    i = 0
    while i < len(text):
        if text[i] in "{[":
            try:
                value, end = decoder.raw_decode(text, i)
            except ValueError:
                i += 1
                continue
            found.append((i, end, value))
            i = end
        else:
            i += 1
    return found


def parse_findings(text: str, known_paths: set[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Findings the model wrote, and the parts of its answer that were not findings (kept)."""
    findings: list[dict[str, Any]] = []
    rest: list[str] = []
    cursor = 0
    for start, end, value in _objects(text):
        items = value if isinstance(value, list) else [value]
        parsed = [f for f in (_finding(item, known_paths) for item in items) if f]
        if parsed:
            rest.append(text[cursor:start])
            findings += parsed
            cursor = end
    rest.append(text[cursor:])
    leftover: list[str] = []
    for line in "".join(rest).splitlines():
        match = LINE_FINDING.match(line)
        if match and match.group(1) in known_paths:
            findings.append(
                {
                    "path": match.group(1),
                    "start_line": int(match.group(2)),
                    "end_line": int(match.group(2)),
                    "severity": "info",
                    "message": match.group(3).strip()[:500],
                    "source": "llm",
                }
            )
        elif line.strip():
            leftover.append(line.strip())
    return findings, leftover


def _finding(item: Any, known_paths: set[str]) -> dict[str, Any] | None:
    if not isinstance(item, dict):
        return None
    message = item.get("message") or item.get("comment") or item.get("issue")
    if not isinstance(message, str) or not message.strip():
        return None
    path = item.get("path") or item.get("file")
    line = item.get("line") or item.get("start_line")
    severity = str(item.get("severity", "info")).lower()
    finding: dict[str, Any] = {
        "path": path if isinstance(path, str) and path in known_paths else None,
        "start_line": line if isinstance(line, int) and line > 0 else None,
        "severity": severity if severity in SEVERITIES else "info",
        "message": message.strip()[:500],
        "source": "llm",
    }
    finding["end_line"] = finding["start_line"]
    return finding
