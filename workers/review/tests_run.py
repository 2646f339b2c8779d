"""A submission's own pytest tests, run in the code-run sandbox (``haven.sandbox``) under its
limits — never outside it. Where no sandbox can be made (no bubblewrap, no user namespaces)
the result says the tests were not run and why.

The box sees ``/usr`` and, read-only, the folder holding this worker's pytest; the submission's
files go in from memory and the report comes back over the pipes (pytest's summary lines), so
the worker never reads a path the submitted code could have changed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import structlog

from haven.sandbox import RunLimits, Sandbox, SandboxSettings, SandboxUnavailable

log = structlog.get_logger("haven.review.tests")

# Where the worker's pytest (its site-packages folder) is seen in the box, read-only.
PYTEST_IN_BOX = "/opt/pytest"
SUMMARY = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected)")
FAILURE = re.compile(r"^(FAILED|ERROR) (\S+)(?: - (.*))?$")
BOOT = (
    "import sys; sys.dont_write_bytecode = True; sys.path.append({path!r}); import pytest; "
    "sys.exit(pytest.main(['-q', '-rfE', '-p', 'no:cacheprovider', '--color=no', "
    "'-o', 'addopts=', '--tb=line']))"
)


def test_files(root: Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*.py")
        if p.name.startswith("test_") or p.name.endswith("_test.py")
    )


def _pytest_home() -> Path | None:
    try:
        import pytest
    except ImportError:
        return None
    return Path(pytest.__file__).resolve().parents[1]


def parse(output: str) -> dict[str, Any]:
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    summary = next((line for line in reversed(output.splitlines()) if SUMMARY.search(line)), "")
    for number, word in SUMMARY.findall(summary):
        key = "errors" if word.startswith("error") else word
        if key in counts:
            counts[key] = int(number)
    failures = []
    for line in output.splitlines():
        match = FAILURE.match(line.strip())
        if match:
            failures.append({"test": match.group(2), "message": (match.group(3) or "")[:300]})
    total = counts["passed"] + counts["failed"] + counts["errors"]
    return {**counts, "total": total, "failures": failures[:50]}


def run_tests(root: Path, sandbox_settings: SandboxSettings, limits: RunLimits) -> dict[str, Any]:
    found = test_files(root)
    if not found:
        return {"found": 0, "ran": False, "reason": "the submission has no pytest tests"}
    base: dict[str, Any] = {"found": len(found), "files": found[:50], "ran": False}
    home = _pytest_home()
    if home is None:
        return {**base, "reason": "pytest is not installed on this worker"}
    files = {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }
    if len(files) > sandbox_settings.max_files or sum(map(len, files.values())) > (
        sandbox_settings.max_total_bytes
    ):
        return {**base, "reason": "the submission is larger than the sandbox takes"}
    settings = sandbox_settings.model_copy(
        update={"ro_bind_to": {**sandbox_settings.ro_bind_to, str(home): PYTEST_IN_BOX}}
    )
    sandbox = Sandbox(settings)
    try:
        sandbox.require_ready()
        command = ["/usr/bin/python3", "-c", BOOT.format(path=PYTEST_IN_BOX)]
        result = sandbox.run(command, files, limits)
    except SandboxUnavailable as exc:
        log.warning("review.tests_not_run", reason=str(exc)[:200])
        return {**base, "reason": f"not run: no sandbox on this worker ({str(exc)[:200]})"}
    output = result.stdout.decode("utf-8", "replace")
    return {
        **base,
        "ran": True,
        **parse(output),
        "exit_code": result.exit_code,
        "limit_hit": result.limit_hit,
        "wall_seconds": round(result.wall_seconds, 3),
        "output_tail": output[-2000:],
        "stderr_tail": result.stderr.decode("utf-8", "replace")[-1000:],
        "limits": limits.model_dump(),
    }
