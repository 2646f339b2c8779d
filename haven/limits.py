"""Work on untrusted input in a child process that cannot take more than its share.

The child gets kernel resource limits (``setrlimit``) — address space, CPU seconds, largest file
written, processes — and its owner a wall-clock deadline, after which the child's whole process
group is killed. There is no cgroup here to lean on, so memory is bounded as address space
(``RLIMIT_AS``): an allocation past the limit fails inside the child (``MemoryError`` in Python)
instead of the machine's OOM killer picking a victim.

Two ways in:

- ``run(argv, limits)`` runs a command to completion and says which limit, if any, ended it (the
  code-run sandbox wraps its own argv in it);
- ``start(argv, limits)`` starts a long-lived child (a pool's worker) in a process group of its
  own, with the limits set before its program starts; its owner keeps the deadline per request
  and ``kill_group``s it when one passes. A Python child can give itself a per-request CPU budget
  with ``cpu_budget`` and reports running out of memory with ``MEMORY_EXIT_CODE``.

Limits are set by a two-line Python wrapper that calls ``setrlimit`` and then ``exec``s the
command: ``preexec_fn`` is not safe in a process with threads, and every Haven worker has them.
A descendant that starts a session of its own leaves the process group and escapes the kill;
code that may do so on purpose belongs in the sandbox (its own PID namespace), not here alone.
"""

from __future__ import annotations

import contextlib
import enum
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

# A Python child that caught MemoryError exits with this, so its owner can tell memory from a
# crash: a process limited by RLIMIT_AS is not killed by the kernel, its allocations just fail.
MEMORY_EXIT_CODE: Final = 86


class Hit(enum.StrEnum):
    """Which limit ended a child."""

    TIMEOUT = "timeout"  # the wall-clock deadline: killed by its owner
    CPU = "cpu"  # RLIMIT_CPU: SIGXCPU from the kernel
    MEMORY = "memory"  # RLIMIT_AS: the child said so with MEMORY_EXIT_CODE
    FILE_SIZE = "file_size"  # RLIMIT_FSIZE: SIGXFSZ from the kernel


@dataclass(frozen=True)
class Limits:
    """``None`` leaves a limit as the parent has it."""

    wall_seconds: float | None = None
    memory_bytes: int | None = None  # address space, interpreter and libraries included
    cpu_seconds: int | None = None
    file_size_bytes: int | None = None  # largest file the child may write
    # RLIMIT_NPROC counts every process and thread of the child's user, not the child's own:
    # only meaningful when the child runs as a user of its own (the sandbox).
    processes: int | None = None


def _rlimits(limits: Limits) -> list[tuple[str, int, int]]:
    wanted = [("RLIMIT_CORE", 0, 0)]  # a crash on hostile input leaves no core file behind
    if limits.memory_bytes is not None:
        wanted.append(("RLIMIT_AS", limits.memory_bytes, limits.memory_bytes))
    if limits.cpu_seconds is not None:
        # The hard limit one second later: SIGXCPU first, so the hit is told apart from a kill.
        wanted.append(("RLIMIT_CPU", limits.cpu_seconds, limits.cpu_seconds + 1))
    if limits.file_size_bytes is not None:
        wanted.append(("RLIMIT_FSIZE", limits.file_size_bytes, limits.file_size_bytes))
    if limits.processes is not None:
        wanted.append(("RLIMIT_NPROC", limits.processes, limits.processes))
    return wanted


# Runs with -I -S: no site-packages, no PYTHONPATH, nothing of the caller's imported.
# Python ignores SIGPIPE and SIGXFSZ, and an ignored signal stays ignored across exec: put them
# back, so the command meets a full pipe or the file-size limit as it would anywhere else.
_EXEC_UNDER_LIMITS: Final = """\
import os, resource, signal, sys
n = int(sys.argv[1])
for i in range(n):
    name, soft, hard = sys.argv[2 + 3 * i : 5 + 3 * i]
    resource.setrlimit(getattr(resource, name), (int(soft), int(hard)))
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
os.execvp(sys.argv[2 + 3 * n], sys.argv[2 + 3 * n :])
"""


def limited_argv(argv: Sequence[str], limits: Limits) -> list[str]:
    """``argv`` prefixed with the wrapper that sets ``limits`` and then execs it."""
    if not argv:
        raise ValueError("empty argv")
    wanted = _rlimits(limits)
    flat = [str(value) for item in wanted for value in item]
    return [sys.executable, "-I", "-S", "-c", _EXEC_UNDER_LIMITS, str(len(wanted)), *flat, *argv]


def start(
    argv: Sequence[str],
    limits: Limits,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    **popen: Any,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` under ``limits`` (all but the wall clock, which is the caller's), leading
    a process group of its own so ``kill_group`` takes its descendants too."""
    return subprocess.Popen(  # noqa: S603 - argv is the caller's, no shell
        limited_argv(argv, limits),
        cwd=cwd,
        env=dict(env) if env is not None else None,
        start_new_session=True,
        **popen,
    )


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child and everything in its process group, then reap it."""
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def hit_by(returncode: int | None) -> Hit | None:
    """The limit a child's exit status shows, if any (a timeout is known only to its owner)."""
    if returncode == -signal.SIGXCPU:
        return Hit.CPU
    if returncode == -signal.SIGXFSZ:
        return Hit.FILE_SIZE
    if returncode == MEMORY_EXIT_CODE:
        return Hit.MEMORY
    return None


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: bytes
    stderr: bytes
    hit: Hit | None


def run(
    argv: Sequence[str],
    limits: Limits,
    *,
    input: bytes | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Outcome:
    """Run ``argv`` to completion under ``limits``; past ``limits.wall_seconds`` its process
    group is killed. Output is kept in memory: give untrusted programs a file-size limit and
    redirect their output to files when it can be large."""
    process = start(
        argv,
        limits,
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        stdout, stderr = process.communicate(input, timeout=limits.wall_seconds)
    except subprocess.TimeoutExpired:
        kill_group(process)
        stdout, stderr = process.communicate()
        return Outcome(process.returncode, stdout, stderr, Hit.TIMEOUT)
    return Outcome(process.returncode, stdout, stderr, hit_by(process.returncode))


def cpu_budget(seconds: float) -> None:
    """In a long-lived child: allow ``seconds`` more CPU time from now (SIGXCPU after that).

    RLIMIT_CPU counts the process's whole life, so a pool worker moves it before each request.
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = usage.ru_utime + usage.ru_stime
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = int(used + seconds) + 1
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def out_of_memory(exc: BaseException) -> bool:
    """In a child with a memory limit: whether ``exc`` came from running out of it.

    Python raises MemoryError, but native parsers report a failed allocation their own way
    (lxml: an "unknown error" while parsing), and libraries wrap what they catch: a MemoryError
    anywhere in the chain counts, and so does an address space that reached the limit.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, MemoryError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return near_memory_limit()


def near_memory_limit() -> bool:
    """Whether this process's peak address space came within a sixteenth of RLIMIT_AS (at
    least 32 MiB): where allocations start to fail."""
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY:
        return False
    status = Path("/proc/self/status").read_text()
    peak_kib = next(
        (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmPeak:")), 0
    )
    return peak_kib * 1024 >= limit - max(limit // 16, 32 * 1024 * 1024)
