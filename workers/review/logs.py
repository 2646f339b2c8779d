"""The log pass: run logs normalised (timestamps, levels, ids and numbers masked), grouped by
template (Drain, bounded: ``max_groups`` clusters at most) and severity, with counts, where each
group was first and last seen and a few samples. A Python traceback is one event (its frames
and its exception line), so a traceback repeated a hundred times is one group of 100.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drain3 import TemplateMiner
from drain3.masking import MaskingInstruction
from drain3.template_miner_config import TemplateMinerConfig

TIMESTAMP = re.compile(
    r"^\s*\[?("
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?"
    r"|[A-Z][a-z]{2} +\d{1,2} \d{2}:\d{2}:\d{2}"
    r"|\d{2}:\d{2}:\d{2}(?:[.,]\d+)?"
    r")\]?\s*"
)
LEVEL = re.compile(
    r"^[\[\s-]*(CRITICAL|FATAL|ERROR|ERR|WARNING|WARN|INFO|DEBUG|TRACE|NOTICE)[\]\s:-]*",
    re.IGNORECASE,
)
SEVERITY = {
    "critical": "error", "fatal": "error", "error": "error", "err": "error",
    "warning": "warning", "warn": "warning", "notice": "info", "info": "info",
    "debug": "debug", "trace": "debug",
}  # fmt: skip
TRACEBACK = "Traceback (most recent call last):"
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)\b.*")
MASKS = [
    MaskingInstruction(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}", "ID"),
    MaskingInstruction(r"0x[0-9a-fA-F]+", "HEX"),
    MaskingInstruction(r"\b[0-9a-fA-F]{16,}\b", "HEX"),
    MaskingInstruction(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b", "IP"),
    MaskingInstruction(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?![\w.])", "NUM"),
]  # fmt: skip


@dataclass
class Group:
    template: str
    severity: str
    count: int = 0
    first_seen: str = ""
    last_seen: str = ""
    samples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "template": self.template,
            "severity": self.severity,
            "count": self.count,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "samples": self.samples,
        }


@dataclass
class LogReport:
    files: int
    lines: int
    events: int
    groups: list[Group]
    truncated: bool

    def top_errors(self, n: int) -> list[Group]:
        return [g for g in self.groups if g.severity == "error"][:n]


@dataclass
class _Event:
    text: str
    severity: str
    where: str
    stamp: str | None


def _strip(line: str) -> tuple[str, str | None, str | None]:
    """The message without its timestamp and level; the timestamp; the severity."""
    stamp = None
    match = TIMESTAMP.match(line)
    if match:
        stamp = match.group(1)
        line = line[match.end() :]
    level = LEVEL.match(line)
    severity = None
    if level:
        severity = SEVERITY.get(level.group(1).lower())
        line = line[level.end() :]
    return line.strip(), stamp, severity


def _events(path: Path, name: str, budget: int) -> tuple[list[_Event], int, bool]:
    events: list[_Event] = []
    lines = 0
    trace: list[str] | None = None
    trace_where = ""
    trace_stamp: str | None = None
    cut = False
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        for number, raw in enumerate(handle, 1):
            if lines >= budget:
                cut = True
                break
            lines += 1
            line = raw.rstrip("\n").replace("\x00", "")
            message, stamp, severity = _strip(line)
            if trace is not None:
                if line.startswith((" ", "\t")) or not line.strip():
                    if line.strip():
                        trace.append(line.strip())
                    continue
                if message.startswith(("During handling", "The above exception")):
                    continue
                if message.startswith(TRACEBACK):
                    continue
                # The exception line ends the traceback.
                frames = [f for f in trace if f.startswith("File ")]
                last = frames[-1] if frames else ""
                text = f"Traceback: {message} at {last}" if last else f"Traceback: {message}"
                events.append(_Event(text, "error", trace_where, trace_stamp))
                trace = None
                if EXCEPTION_LINE.match(message):
                    continue
            if message.startswith(TRACEBACK) or line.strip().startswith(TRACEBACK):
                trace, trace_where, trace_stamp = [], f"{name}:{number}", stamp
                continue
            if not message:
                continue
            if severity is None:
                severity = "error" if EXCEPTION_LINE.match(message) else "info"
            events.append(_Event(message[:2000], severity, f"{name}:{number}", stamp))
    if trace is not None:
        events.append(_Event("Traceback: (cut short)", "error", trace_where, trace_stamp))
    return events, lines, cut


SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2, "debug": 3}


def group_logs(root: Path, *, max_lines: int, max_groups: int, samples: int) -> LogReport:
    config = TemplateMinerConfig()
    config.drain_sim_th = 0.4
    config.drain_depth = 4
    config.drain_max_clusters = max_groups
    config.masking_instructions = MASKS
    config.parametrize_numeric_tokens = True
    miner = TemplateMiner(config=config)
    groups: dict[tuple[int, str], Group] = {}
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    total_lines = 0
    events = 0
    truncated = False
    for path in files:
        budget = max_lines - total_lines
        if budget <= 0:
            truncated = True
            break
        found, read, cut = _events(path, path.relative_to(root).as_posix(), budget)
        total_lines += read
        truncated = truncated or cut
        for event in found:
            events += 1
            mined = miner.add_log_message(event.text)
            key = (int(mined["cluster_id"]), event.severity)
            group = groups.get(key)
            if group is None:
                if len(groups) >= max_groups * 2:
                    truncated = True
                    continue
                group = groups[key] = Group(str(mined["template_mined"]), event.severity)
                group.first_seen = event.stamp or event.where
            group.template = str(mined["template_mined"])
            group.count += 1
            group.last_seen = event.stamp or event.where
            if len(group.samples) < samples:
                group.samples.append(event.text[:500])
    ordered = sorted(groups.values(), key=lambda g: (SEVERITY_ORDER.get(g.severity, 9), -g.count))
    return LogReport(len(files), total_lines, events, ordered, truncated)
