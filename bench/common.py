"""What every benchmark report states about the machine it ran on, and where it is kept."""

from __future__ import annotations

import os
import platform
import threading
from collections.abc import Callable
from pathlib import Path

# Every benchmark appends its report here, with the machine and the date.
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def record(report: str, *, save: bool = True) -> None:
    """Print ``report`` and, when ``save``, append it to bench/RESULTS.md as a section of
    its own."""
    print(report)
    if save:
        with RESULTS.open("a", encoding="utf-8") as results:
            results.write("\n" + report)


def machine() -> str:
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return f"{os.cpu_count()} CPUs, {mem_kb / 1024 / 1024:.1f} GiB RAM, {platform.platform()}"


class PeakRss:
    """Samples a process's resident memory every ``interval`` seconds and keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss_kb(self) -> int:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except FileNotFoundError:
            return 0
        return next(
            (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")), 0
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_kb = max(self.peak_kb, self.rss_kb())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name sits in parentheses and may hold spaces: split after it.
    return raw[raw.rindex(")") + 2 :].split()


def own_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads), without its children."""
    fields = _stat_fields(pid)
    return 0.0 if fields is None else sum(int(v) for v in fields[11:13]) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and every live descendant."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                parents.setdefault(int(fields[1]), []).append(int(entry.name))
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    todo = [pid]
    while todo:
        current = todo.pop()
        fields = _stat_fields(current)
        if fields is not None:
            # utime, stime, and the children already waited for (cutime, cstime).
            total += sum(int(v) for v in fields[11:15]) / ticks
        todo += parents.get(current, [])
    return total


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = values[3] + values[4]
    return (sum(values) - idle) / ticks, sum(values) / ticks


def pids_matching(fragment: str) -> list[int]:
    """Processes whose command line contains ``fragment`` (a server started outside Python)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
            if fragment in cmdline:
                found.append(int(entry.name))
    return found


class CpuAccount:
    """CPU seconds spent by named process trees (and the whole machine) over a block."""

    def __init__(self, roles: dict[str, Callable[[], float]]) -> None:
        self.roles = roles
        self.start: dict[str, float] = {}
        self.spent: dict[str, float] = {}
        self.machine_busy = 0.0
        self.machine_total = 0.0

    def _sample(self) -> dict[str, float]:
        return {role: seconds() for role, seconds in self.roles.items()}

    def __enter__(self) -> CpuAccount:
        self.start = self._sample()
        self._machine = machine_cpu_seconds()
        return self

    def __exit__(self, *_: object) -> None:
        end = self._sample()
        self.spent = {role: end[role] - self.start[role] for role in self.roles}
        busy, total = machine_cpu_seconds()
        self.machine_busy = busy - self._machine[0]
        self.machine_total = total - self._machine[1]

    def summary(self) -> str:
        parts = [f"{role} {seconds:.1f} s" for role, seconds in self.spent.items()]
        return (
            ", ".join(parts) + f"; whole machine busy {self.machine_busy:.1f} of "
            f"{self.machine_total:.1f} CPU-s"
        )
