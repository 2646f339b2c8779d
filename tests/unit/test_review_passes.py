"""The review's diff, log grouping, budget plan and the tolerant reading of model output."""

from __future__ import annotations

import io
import random
import string
import zipfile
from pathlib import Path

from tests.fixtures import review_archives as z
from workers.review.diffing import diff_trees
from workers.review.linters import Finding
from workers.review.llm import parse_findings, plan
from workers.review.logs import group_logs
from workers.review.scoring import score


def _unzip(data: bytes, dest: Path) -> Path:
    dest.mkdir()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        zf.extractall(dest)
    return dest


def test_the_diff_names_changed_lines_on_the_new_side(tmp_path: Path) -> None:
    old = _unzip(z.project_old(), tmp_path / "old")
    new = _unzip(z.project_new(), tmp_path / "new")
    changes = diff_trees(old, new)
    by_path = changes.by_path()
    assert by_path["grades.py"].status == "modified"
    assert by_path["util.py"].status == "added"
    assert by_path["photo.png"].binary
    assert changes.unchanged == ["README.md"]
    for line in z.DEFECT_LINES.values():
        assert line in by_path["grades.py"].changed_lines
    # average() is unchanged: its body line is not a changed line.
    assert 7 not in by_path["grades.py"].changed_lines


def test_without_an_old_archive_everything_is_new(tmp_path: Path) -> None:
    new = _unzip(z.project_new(), tmp_path / "new")
    changes = diff_trees(None, new)
    assert changes.whole_submission_new
    assert {c.status for c in changes.files} == {"added"}
    assert len(changes.by_path()["grades.py"].changed_lines) == len(z.APP_V2.splitlines())


def test_a_repeated_traceback_is_one_group_with_its_count(tmp_path: Path) -> None:
    logs = _unzip(z.run_logs(repeats=7), tmp_path / "logs")
    report = group_logs(logs, max_lines=10_000, max_groups=100, samples=2)
    tracebacks = [g for g in report.groups if g.template.startswith("Traceback")]
    assert len(tracebacks) == 1
    assert tracebacks[0].count == 7
    assert tracebacks[0].severity == "error"
    assert "ZeroDivisionError" in tracebacks[0].template
    assert len(tracebacks[0].samples) == 2
    # "request N started" (INFO) and "request N failed" (ERROR) share a template, not a group.
    failed = [
        g for g in report.groups if g.template.startswith("request") and g.severity == "error"
    ]
    assert [g.count for g in failed] == [7]
    assert "failed" in failed[0].samples[0]
    assert failed[0].first_seen.startswith("2026-11-30 10:00:00")
    assert failed[0].last_seen.startswith("2026-11-30 10:00:06")
    # Errors first, then warnings, then the rest.
    assert [g.severity for g in report.groups][:2] == ["error", "error"]
    assert report.groups[-1].severity == "info"


def test_log_groups_stay_bounded(tmp_path: Path) -> None:
    rng = random.Random(5)

    def word() -> str:
        return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(4, 12)))

    folder = tmp_path / "logs"
    folder.mkdir()
    lines = [f"ERROR {word()} {word()} {word()}" for _ in range(3000)]
    (folder / "noise.log").write_text("\n".join(lines))
    report = group_logs(folder, max_lines=2000, max_groups=50, samples=1)
    assert report.lines == 2000
    assert report.truncated
    assert 50 <= len(report.groups) <= 100
    assert sum(g.count for g in report.groups) <= 2000


def _words(texts: list[str]) -> list[int]:
    return [len(t.split()) for t in texts]


def test_everything_that_fits_goes_in_one_call(tmp_path: Path) -> None:
    new = _unzip(z.project_new(), tmp_path / "new")
    batches, coverage = plan(diff_trees(None, new), _words, budget=10_000, max_calls=3)
    assert len(batches) == 1
    assert {c.path: c.status for c in coverage} == {
        "README.md": "reviewed",
        "grades.py": "reviewed",
        "util.py": "reviewed",
        "test_grades.py": "reviewed",
        "photo.png": "skipped",
    }


def test_over_budget_files_are_split_or_listed_as_skipped_never_dropped(tmp_path: Path) -> None:
    files = {f"mod{i}.py": "\n".join(f"value_{j} = {j} + {i}" for j in range(40)) for i in range(6)}
    new = _unzip(z.zip_of(files), tmp_path / "new")
    batches, coverage = plan(diff_trees(None, new), _words, budget=200, max_calls=2)
    assert len(batches) == 2
    assert all(b.tokens <= 200 for b in batches)
    statuses = {c.path: c.status for c in coverage}
    assert set(statuses) == set(files)  # every changed file has a line in the coverage
    assert "skipped" in statuses.values()
    assert all(c.reason == "budget" for c in coverage if c.status == "skipped")


def test_model_output_is_read_tolerantly_and_nothing_is_lost() -> None:
    text = (
        'Here are my findings:\n{"path": "app.py", "line": 3, "severity": "error", '
        '"message": "eval on input"}\n'
        "app.py:7: the bare except hides errors\n"
        '{"path": "app.py", "line": "x", "message": "odd line"}\n'
        "Overall the code is readable.\n"
        '{"broken json": \n'
    )
    findings, rest = parse_findings(text, {"app.py"})
    assert [(f["path"], f["start_line"], f["severity"]) for f in findings] == [
        ("app.py", 3, "error"),
        ("app.py", None, "info"),
        ("app.py", 7, "info"),
    ]
    assert "Overall the code is readable." in rest
    assert any("broken json" in line for line in rest)


def test_the_score_follows_the_rubric() -> None:
    error = Finding("a.py", 1, 1, "error", "F821", "undefined", "ruff")
    warning = Finding("a.py", 2, 2, "warning", "B307", "eval", "bandit")
    assert score([], [], None, {"ran": False}) == 5.0
    assert score([error, warning], [], None, {"ran": False}) == 4.5  # 5 - 0.7 → 4.3 → 4.5
    assert score([error] * 10, [], None, {"ran": False}) == 2.5  # linters cost at most 2.5
    logs = {"groups": [{"severity": "error"}] * 4}
    assert score([error] * 10, [], logs, {"ran": False}) == 2.0
