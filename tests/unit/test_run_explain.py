"""Reading a failed run's error and matching it against registry entries, as the worker does
before it would ever ask the language model."""

from __future__ import annotations

import uuid

from haven.db.tables import ErrorPattern
from haven.sandbox import RunLimits, SandboxResult, SandboxSettings
from workers.runs import explain

PYTHON = SandboxSettings().languages["python"]


def result(
    stderr: bytes, *, exit_code: int | None = 1, limit_hit: str | None = None
) -> SandboxResult:
    return SandboxResult(
        exit_code=exit_code,
        signal=None if exit_code is not None else "SIGKILL",
        stdout=b"",
        stderr=stderr,
        stdout_truncated=False,
        stderr_truncated=False,
        wall_seconds=0.1,
        cpu_seconds=0.05,
        peak_memory_bytes=None,
        limit_hit=limit_hit,
        overshoot_ms=None,
        limits=RunLimits(),
    )


def entry(error_type: str | None, **fields: str | None) -> ErrorPattern:
    return ErrorPattern(
        id=uuid.uuid4(),
        tenant_id=None,
        language="python",
        error_type=error_type,
        title=fields.pop("title", None) or f"about {error_type}",
        explanation="...",
        hint="",
        **fields,
    )


TRACEBACK = b"""Traceback (most recent call last):
  File "/work/main.py", line 3, in <module>
    totl += i
NameError: name 'totl' is not defined
"""


def test_the_error_is_the_tracebacks_last_line_and_a_limit_is_its_own_type() -> None:
    found = explain.signature(result(TRACEBACK), PYTHON)
    assert (found.error_type, found.message) == ("NameError", "name 'totl' is not defined")
    own = explain.signature(result(b"__main__.QuotaSpent: no more tries\n"), PYTHON)
    assert (own.error_type, own.message) == ("QuotaSpent", "no more tries")
    loop = explain.signature(result(b"", exit_code=None, limit_hit="wall"), PYTHON)
    assert loop.error_type == "TimeLimitExceeded"
    assert not explain.failed(result(b"", exit_code=0))


def test_entries_match_on_type_message_and_code_in_the_order_given() -> None:
    found = explain.signature(result(TRACEBACK), PYTHON)
    other_message = entry("NameError", message_regex=r"^module ", title="wrong message")
    by_message = entry("NameError", message_regex=r"name '.+' is not defined", title="typo")
    assert explain.match([other_message, by_message], found, "") is by_message
    mutable = entry(None, code_regex=r"def \w+\([^)]*=\s*\[\]", title="mutable default")
    code = "def add(item, items=[]):\n    items.append(item)\n"
    assert (
        explain.match([mutable], explain.signature(result(b"AssertionError\n"), PYTHON), code)
        is mutable
    )
    assert explain.match([mutable], found, "print(1)") is None


def test_a_catastrophic_pattern_is_skipped_not_a_stuck_worker() -> None:
    found = explain.signature(result(b"ValueError: " + b"a" * 40 + b"!\n"), PYTHON)
    # Exponential backtracking (the ``regex`` module defuses the textbook (a+)+$, not this).
    evil = entry("ValueError", message_regex=r"(a|aa)+$", title="evil")
    fine = entry("ValueError", title="fine")
    assert explain.match([evil, fine], found, "") is fine
