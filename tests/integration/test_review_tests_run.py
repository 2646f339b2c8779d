"""A submission's pytest tests run in the real sandbox: counts and failures come back; code
that tries to leave (network, the worker's files) gets nothing."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from haven.review_settings import ReviewSettings
from haven.sandbox import SandboxSettings
from tests.fixtures import review_archives as z
from workers.review.tests_run import parse, run_tests


def _unzip(data: bytes, dest: Path) -> Path:
    dest.mkdir()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        zf.extractall(dest)
    return dest


def test_the_submissions_tests_run_in_the_sandbox(tmp_path: Path) -> None:
    root = _unzip(z.project_new(), tmp_path / "new")
    result = run_tests(root, SandboxSettings(), ReviewSettings().test_limits)
    assert result["ran"], result
    assert (result["passed"], result["failed"], result["total"]) == (1, 1, 2)
    assert result["failures"][0]["test"] == "test_grades.py::test_average_of_nothing_is_zero"
    assert result["limit_hit"] is None


def test_tests_that_reach_out_find_nothing(tmp_path: Path) -> None:
    root = tmp_path / "new"
    root.mkdir()
    (root / "test_escape.py").write_text(
        "import os, socket\n"
        "def test_network():\n"
        "    socket.create_connection(('127.0.0.1', 5432), timeout=2)\n"
        "def test_secrets():\n"
        f"    assert os.path.exists({str(Path.cwd())!r})\n"
        "def test_environment():\n"
        "    assert 'HAVEN_DATABASE_URL' in os.environ\n"
    )
    result = run_tests(root, SandboxSettings(), ReviewSettings().test_limits)
    assert result["ran"]
    assert (result["passed"], result["failed"]) == (0, 3)


def test_no_tests_no_run(tmp_path: Path) -> None:
    root = tmp_path / "new"
    root.mkdir()
    (root / "app.py").write_text("x = 1\n")
    result = run_tests(root, SandboxSettings(), ReviewSettings().test_limits)
    assert result == {"found": 0, "ran": False, "reason": "the submission has no pytest tests"}


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("..F\nFAILED t.py::test_x - assert 1 == 2\n1 failed, 2 passed in 0.1s", (2, 1, 0)),
        ("E\nERROR t.py - ImportError\n1 error in 0.2s", (0, 0, 1)),
        ("no summary at all", (0, 0, 0)),
    ],
)
def test_pytest_summaries_are_read(output: str, expected: tuple[int, int, int]) -> None:
    counts = parse(output)
    assert (counts["passed"], counts["failed"], counts["errors"]) == expected
