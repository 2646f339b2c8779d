"""Static analysis with linters that write JSON, under time and memory limits, every finding
normalised to one shape (reviewdog's rdjson, flattened): path, lines, severity, rule, message,
source. By default only findings on changed lines are kept ("added" mode).

Python is checked by ruff (pyflakes, pycodestyle errors, bugbear) and bandit (security); other
languages are reviewed by the LLM only, and the result says so. The linters run with
``--isolated`` / no configuration from the submission, so a submitted config file cannot turn
checks off; they parse the code and never run it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog

from haven.limits import Limits, run
from workers.review.diffing import ChangeSet

log = structlog.get_logger("haven.review.linters")

RUFF_RULES = "E4,E7,E9,F,B"
SEVERITY_RANK = {"error": 0, "warning": 1, "info": 2}
PYTHON_SUFFIXES = (".py", ".pyi")


@dataclass(frozen=True)
class Finding:
    path: str
    start_line: int | None
    end_line: int | None
    severity: str  # error | warning | info
    rule: str | None
    message: str
    source: str  # ruff | bandit | llm
    cwe: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass
class StaticReport:
    findings: list[Finding]
    tools: dict[str, dict[str, Any]]  # tool -> {ran, files, seconds?, error?}
    languages_llm_only: list[str]
    dropped_unchanged: int = 0
    truncated: int = 0


def _ruff_severity(code: str) -> str:
    if code.startswith("E9") or code in {"F821", "F822", "F823", "F706", "F704", "F811"}:
        return "error"
    return "warning"


def _relative(root: Path, filename: str) -> str:
    path = Path(filename)
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix().lstrip("/")


def run_ruff(root: Path, files: list[str], limits: Limits) -> tuple[list[Finding], str | None]:
    argv = [sys.executable, "-m", "ruff", "check", "--isolated", "--no-cache", "--exit-zero",
            "--output-format=json", f"--select={RUFF_RULES}", "--", *files]  # fmt: skip
    outcome = run(argv, limits, cwd=root, env={"PATH": "/usr/bin:/bin"})
    if outcome.hit is not None:
        return [], f"ruff stopped: {outcome.hit.value} limit"
    try:
        items = json.loads(outcome.stdout or b"[]")
    except ValueError:
        return [], "ruff wrote no JSON"
    findings = []
    for item in items:
        code = item.get("code") or "E999"
        location = item.get("location") or {}
        end = item.get("end_location") or {}
        findings.append(
            Finding(
                path=_relative(root, item.get("filename", "")),
                start_line=location.get("row"),
                end_line=end.get("row") or location.get("row"),
                severity=_ruff_severity(code),
                rule=code,
                message=str(item.get("message", ""))[:500],
                source="ruff",
            )
        )
    return findings, None


BANDIT_SEVERITY = {"HIGH": "error", "MEDIUM": "warning", "LOW": "info"}


def run_bandit(root: Path, files: list[str], limits: Limits) -> tuple[list[Finding], str | None]:
    argv = [sys.executable, "-m", "bandit", "-f", "json", "-q", "--", *files]
    outcome = run(argv, limits, cwd=root, env={"PATH": "/usr/bin:/bin"})
    if outcome.hit is not None:
        return [], f"bandit stopped: {outcome.hit.value} limit"
    try:
        data = json.loads(outcome.stdout or b"{}")
    except ValueError:
        return [], "bandit wrote no JSON"
    findings = []
    for item in data.get("results", []):
        lines = item.get("line_range") or [item.get("line_number")]
        cwe = (item.get("issue_cwe") or {}).get("id")
        findings.append(
            Finding(
                path=_relative(root, item.get("filename", "")),
                start_line=item.get("line_number"),
                end_line=max(lines) if lines and lines[0] is not None else item.get("line_number"),
                severity=BANDIT_SEVERITY.get(str(item.get("issue_severity")), "info"),
                rule=item.get("test_id"),
                message=str(item.get("issue_text", ""))[:500],
                source="bandit",
                cwe=int(cwe) if isinstance(cwe, int) else None,
            )
        )
    return findings, None


def analyse(
    root: Path,
    changes: ChangeSet,
    *,
    timeout: float,
    memory_mb: int,
    only_changed_lines: bool,
    max_findings: int,
) -> StaticReport:
    reviewed = [c for c in changes.files if c.status != "deleted" and not c.binary]
    python = [c.path for c in reviewed if c.path.endswith(PYTHON_SUFFIXES) and not c.generated]
    others = sorted(
        {Path(c.path).suffix or c.path for c in reviewed if not c.path.endswith(PYTHON_SUFFIXES)}
    )
    limits = Limits(wall_seconds=timeout, memory_bytes=memory_mb * 1024 * 1024)
    findings: list[Finding] = []
    tools: dict[str, dict[str, Any]] = {}
    for name, tool in (("ruff", run_ruff), ("bandit", run_bandit)):
        if not python:
            tools[name] = {"ran": False, "files": 0, "reason": "no changed Python files"}
            continue
        found, error = tool(root, python, limits)
        tools[name] = {"ran": error is None, "files": len(python)}
        if error:
            tools[name]["error"] = error
            log.warning("review.linter_failed", tool=name, error=error)
        findings.extend(found)

    by_path = changes.by_path()
    kept: list[Finding] = []
    dropped = 0
    for finding in findings:
        change = by_path.get(finding.path)
        on_changed = change is not None and (
            finding.start_line is None
            or finding.severity == "error"
            or any(
                line in change.changed_lines
                for line in range(finding.start_line, (finding.end_line or finding.start_line) + 1)
            )
        )
        if only_changed_lines and not on_changed:
            dropped += 1
            continue
        kept.append(finding)
    kept.sort(key=lambda f: (SEVERITY_RANK[f.severity], f.path, f.start_line or 0))
    return StaticReport(
        findings=kept[:max_findings],
        tools=tools,
        languages_llm_only=[s for s in others if s not in {".md", ".txt", ".rst"}],
        dropped_unchanged=dropped,
        truncated=max(0, len(kept) - max_findings),
    )
