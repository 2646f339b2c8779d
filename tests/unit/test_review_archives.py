"""Hostile archives are refused, or contained, with a reason; nothing is ever written outside
the job's folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from haven.archives import ArchiveRejected, extract, inspect
from haven.review_settings import ReviewSettings
from tests.fixtures import review_archives as z

LIMITS = ReviewSettings().archive_limits("new_zip")


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "submission.zip"
    path.write_bytes(data)
    return path


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.fixture()
def job(tmp_path: Path) -> Path:
    folder = tmp_path / "job"
    folder.mkdir()
    return folder


def test_a_zip_bomb_is_refused_by_its_ratio(tmp_path: Path) -> None:
    with pytest.raises(ArchiveRejected) as refused:
        inspect(_write(tmp_path, z.zip_bomb()), "new_zip", LIMITS)
    assert refused.value.code == "archive.ratio"
    assert "new_zip" in refused.value.message and "zip bomb" in refused.value.message


def test_a_hundred_thousand_entries_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ArchiveRejected) as refused:
        inspect(_write(tmp_path, z.many_entries()), "new_zip", LIMITS)
    assert refused.value.code == "archive.too_many_entries"
    assert "100000 entries" in refused.value.message


@pytest.mark.parametrize(
    "name",
    ["../escape.py", "src/../../escape.py", "/etc/cron.d/evil.py", "C:/evil.py", "..\\evil.py"],
)
def test_paths_that_leave_the_folder_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ArchiveRejected) as refused:
        inspect(_write(tmp_path, z.with_entry(name)), "new_zip", LIMITS)
    assert refused.value.code == "archive.unsafe_path"


def test_a_symlink_is_listed_as_skipped_and_never_created(tmp_path: Path, job: Path) -> None:
    archive = _write(tmp_path, z.with_symlink("/etc/passwd"))
    inventory = inspect(archive, "new_zip", LIMITS)
    assert [(s.path, s.reason) for s in inventory.skipped] == [
        ("passwd.py", "symlink (never followed)")
    ]
    written = extract(archive, inventory, job, LIMITS)
    assert _tree(job) == {"ok.py"}
    assert not any(p.is_symlink() for p in job.rglob("*"))
    assert [e.path for e in written.entries] == ["ok.py"]


def test_archives_inside_the_archive_are_not_extracted(tmp_path: Path, job: Path) -> None:
    archive = _write(tmp_path, z.nested())
    inventory = inspect(archive, "new_zip", LIMITS)
    written = extract(archive, inventory, job, LIMITS)
    reasons = {s.path: s.reason for s in written.skipped}
    assert reasons["inner.zip"].startswith("archive inside the archive")
    # A zip renamed to .py is told by its first bytes.
    assert reasons["disguised.py"].startswith("archive inside the archive")
    assert _tree(job) == {"ok.py"}


def test_not_a_zip_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArchiveRejected) as refused:
        inspect(_write(tmp_path, b"just some text, not an archive"), "old_zip", LIMITS)
    assert refused.value.code == "archive.not_zip"
    assert refused.value.message.startswith("old_zip:")


def test_a_planted_symlink_in_the_job_folder_is_not_written_through(
    tmp_path: Path, job: Path
) -> None:
    """A folder of the job that is a symlink (planted by anything) is not followed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, job / "src")
    archive = _write(tmp_path, z.zip_of({"src/evil.py": "x = 1\n"}))
    inventory = inspect(archive, "new_zip", LIMITS)
    with pytest.raises(ArchiveRejected):
        extract(archive, inventory, job, LIMITS)
    assert list(outside.iterdir()) == []


def test_a_normal_project_is_extracted_whole_and_only_there(tmp_path: Path, job: Path) -> None:
    before = _tree(tmp_path)
    archive = _write(tmp_path, z.project_new())
    inventory = inspect(archive, "new_zip", LIMITS)
    extract(archive, inventory, job, LIMITS)
    assert _tree(job) == {"grades.py", "util.py", "test_grades.py", "README.md"}
    assert {s.path: s.reason for s in inventory.skipped} == {
        "photo.png": "not an allowed file type"
    }
    assert (job / "grades.py").read_text() == z.APP_V2
    # Only the archive itself and the job's files appeared.
    assert _tree(tmp_path) - before == {"submission.zip"} | {f"job/{p}" for p in _tree(job)}
