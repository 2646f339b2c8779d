"""haven.limits: commands run under resource limits and a deadline, told apart by which limit
ended them."""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import pytest

from haven.limits import MEMORY_EXIT_CODE, Hit, Limits, run


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_command_within_its_limits_runs_to_the_end() -> None:
    outcome = run(
        python("import sys; print(sys.stdin.read().upper())"),
        Limits(wall_seconds=30, memory_bytes=1024 * 1024 * 1024, cpu_seconds=30),
        input=b"hello",
    )
    assert (outcome.returncode, outcome.stdout, outcome.hit) == (0, b"HELLO\n", None)


def test_past_its_deadline_a_command_and_what_it_started_are_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(600)\n"
    )
    outcome = run(python(code), Limits(wall_seconds=3))
    assert outcome.hit is Hit.TIMEOUT
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 10  # the kernel may take a moment to reap it
    while time.monotonic() < deadline and _alive(grandchild):
        time.sleep(0.1)
    assert not _alive(grandchild)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return status[status.rindex(")") + 2] != "Z"  # a zombie is dead, waiting for its parent


def test_a_command_that_spins_is_stopped_by_its_cpu_limit() -> None:
    outcome = run(python("while True: pass"), Limits(wall_seconds=60, cpu_seconds=1))
    assert outcome.hit is Hit.CPU


def test_a_command_that_writes_too_much_is_stopped_by_the_file_size_limit(
    tmp_path: Path,
) -> None:
    code = (
        "import signal\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_DFL)\n"  # Python ignores it by default
        f"open({str(tmp_path / 'out')!r}, 'wb').write(b'x' * 10_000_000)\n"
    )
    outcome = run(python(code), Limits(wall_seconds=30, file_size_bytes=1_000_000))
    assert outcome.hit is Hit.FILE_SIZE
    assert (tmp_path / "out").stat().st_size <= 1_000_000


def test_an_allocation_past_the_memory_limit_fails_inside_the_command() -> None:
    code = (
        "import os\n"
        "try:\n"
        "    data = bytearray(2 * 1024 ** 3)\n"
        "except MemoryError:\n"
        f"    os._exit({MEMORY_EXIT_CODE})\n"
    )
    outcome = run(python(code), Limits(wall_seconds=30, memory_bytes=512 * 1024 * 1024))
    assert outcome.hit is Hit.MEMORY


def test_the_caller_keeps_its_own_limits() -> None:
    before = [resource.getrlimit(which) for which in (resource.RLIMIT_AS, resource.RLIMIT_CPU)]
    run(python("pass"), Limits(wall_seconds=30, memory_bytes=256 * 1024 * 1024, cpu_seconds=5))
    after = [resource.getrlimit(which) for which in (resource.RLIMIT_AS, resource.RLIMIT_CPU)]
    assert after == before


def test_an_empty_command_is_refused() -> None:
    with pytest.raises(ValueError, match="empty argv"):
        run([], Limits())
