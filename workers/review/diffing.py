"""Old submission against new: which files were added, changed or deleted, their hunks (new
side line numbers, a little context) and the set of changed lines per file, which the
linters' findings are filtered by. Without an old submission every file is new."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
# Generated, vendored and lock files: listed, never reviewed line by line.
GENERATED = re.compile(
    r"(^|/)(node_modules|vendor|third_party|\.venv|venv|dist|build|__pycache__|\.git)/"
    r"|(\.min\.js|\.lock|-lock\.json|\.pb2\.py|_pb2_grpc\.py)$"
    r"|(^|/)(package-lock\.json|poetry\.lock|Pipfile\.lock|yarn\.lock|uv\.lock)$"
)


@dataclass
class Hunk:
    old_start: int
    new_start: int
    lines: list[str]  # unified-diff lines: " ctx", "+added", "-removed"

    @property
    def deletion_only(self) -> bool:
        return not any(line.startswith("+") for line in self.lines)

    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass
class FileChange:
    path: str
    status: str  # added | modified | deleted
    hunks: list[Hunk] = field(default_factory=list)
    changed_lines: set[int] = field(default_factory=set)  # new-side line numbers
    added: int = 0
    removed: int = 0
    binary: bool = False
    generated: bool = False

    @property
    def size(self) -> int:
        return sum(len(line) + 1 for hunk in self.hunks for line in hunk.lines)


@dataclass
class ChangeSet:
    files: list[FileChange]
    unchanged: list[str]
    whole_submission_new: bool

    def by_path(self) -> dict[str, FileChange]:
        return {change.path: change for change in self.files}


def _read(path: Path) -> list[str] | None:
    """The file's lines, or None for a binary file."""
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        return None
    return data.decode("utf-8", "replace").splitlines()


def _files(root: Path | None) -> dict[str, Path]:
    if root is None:
        return {}
    return {
        p.relative_to(root).as_posix(): p
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def diff_trees(
    old_root: Path | None, new_root: Path, *, before: int = 5, after: int = 1
) -> ChangeSet:
    old, new = _files(old_root), _files(new_root)
    changes: list[FileChange] = []
    unchanged: list[str] = []
    for path in sorted(set(old) | set(new)):
        old_lines = _read(old[path]) if path in old else []
        new_lines = _read(new[path]) if path in new else []
        status = "added" if path not in old else "deleted" if path not in new else "modified"
        change = FileChange(path, status, generated=bool(GENERATED.search(path)))
        if old_lines is None or new_lines is None:
            change.binary = True
            if status != "modified" or old[path].read_bytes() != new[path].read_bytes():
                changes.append(change)
            else:
                unchanged.append(path)
            continue
        if status == "modified" and old_lines == new_lines:
            unchanged.append(path)
            continue
        context = max(before, after)
        diff = list(difflib.unified_diff(old_lines, new_lines, lineterm="", n=context))
        hunk: Hunk | None = None
        new_no = 0
        for line in diff[2:]:
            header = HUNK_HEADER.match(line)
            if header:
                hunk = Hunk(int(header.group(1)), int(header.group(3)), [])
                change.hunks.append(hunk)
                new_no = int(header.group(3))
                continue
            if hunk is None:
                continue
            hunk.lines.append(line)
            if line.startswith("+"):
                change.changed_lines.add(new_no)
                change.added += 1
                new_no += 1
            elif line.startswith("-"):
                change.removed += 1
            else:
                new_no += 1
        changes.append(change)
    for change in changes:
        _trim_context(change, before, after)
    return ChangeSet(changes, unchanged, whole_submission_new=old_root is None)


def _trim_context(change: FileChange, before: int, after: int) -> None:
    """difflib keeps the same context on both sides; PR-Agent's lesson is more before a change
    (what leads to it) than after."""
    for hunk in change.hunks:
        lines = hunk.lines
        first = next((i for i, line in enumerate(lines) if line[:1] in "+-"), 0)
        last = max((i for i, line in enumerate(lines) if line[:1] in "+-"), default=len(lines))
        start = max(0, first - before)
        hunk.new_start += sum(1 for line in lines[:start] if not line.startswith("-"))
        hunk.old_start += sum(1 for line in lines[:start] if not line.startswith("+"))
        hunk.lines = lines[start : last + 1 + after]
