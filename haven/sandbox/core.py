"""Running untrusted code in a box made by Debian's bubblewrap.

Each run gets fresh user, PID, network (loopback only, nothing listening), mount, IPC, UTS and
cgroup namespaces; a read-only view of the runtime (``/usr``) and nothing else of the host
(no ``/etc``, no home, no secrets, no worker files); an empty tmpfs job folder (``/work``) and
``/tmp`` of a fixed size; an empty environment; kernel limits set by ``prlimit`` inside the
box, before the code starts (CPU seconds, address space, processes, file size, open files, no
core files); and a wall-clock deadline after which the whole process group is killed.

Nothing of a run is on the host's disk: the submitted files are copied in by bubblewrap from
in-memory files (``memfd``) before the code starts, stdin is an in-memory file, and stdout and
stderr come back over pipes (capped, the rest read and dropped). The worker never opens,
writes or changes a path inside the box, so a symlink the code plants there leads nowhere
(Judge0's CVE-2024-28185 and CVE-2024-28189). When the box's first process ends, the kernel
kills everything left in its PID namespace (a daemon that double-forked and called
``setsid`` included); ``run`` returns only after that process is gone, so the tmpfs mounts
and every process of the box are gone with it.

If the host cannot create the namespaces, ``run`` raises ``SandboxUnavailable`` with
bubblewrap's reason: code is never run unsandboxed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from haven.sandbox.settings import Language, RunLimits, SandboxSettings

__all__ = ["JOB_DIR", "Readiness", "Sandbox", "SandboxResult", "SandboxUnavailable"]

JOB_DIR = "/work"
_PATH = "/usr/local/bin:/usr/bin:/bin"
_READ = 64 * 1024
# After the box's first process ended, how long its pipes may stay open (the kernel is still
# killing the rest of the PID namespace).
_DRAIN_SECONDS = 2.0

# What the code's own error output says when a kernel limit refused it (strerror texts, so
# any language that reports errno shows them).
_LIMIT_MARKERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("memory", re.compile(r"\bMemoryError\b|Cannot allocate memory|out of memory", re.I)),
    ("processes", re.compile(r"Resource temporarily unavailable|BlockingIOError")),
    ("file_size", re.compile(r"File too large")),
    ("disk", re.compile(r"No space left on device|Disk quota exceeded")),
)


class SandboxUnavailable(RuntimeError):
    """The box could not be made (no bubblewrap, namespaces refused by the host or its
    seccomp profile). The message says why, for operators and for the refused run."""


@dataclass(frozen=True)
class SandboxResult:
    exit_code: int | None  # the code's exit status; None when a signal ended it
    signal: str | None  # e.g. "SIGKILL"
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    wall_seconds: float
    cpu_seconds: float | None  # None when the box was killed (its usage is not collected)
    peak_memory_bytes: int | None  # largest resident set of any process of the box
    # Which limit ended or refused the code: wall | cpu | memory | processes | file_size |
    # disk, or None.
    limit_hit: str | None
    # How far past the wall limit the box was killed and reaped (only for a wall hit).
    overshoot_ms: float | None
    limits: RunLimits
    isolation: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.limit_hit is None

    def report(self) -> dict[str, Any]:
        """The result as JSON-able data (output decoded as UTF-8, invalid bytes replaced)."""
        return {
            "exit_code": self.exit_code,
            "signal": self.signal,
            "stdout": self.stdout.decode("utf-8", "replace"),
            "stderr": self.stderr.decode("utf-8", "replace"),
            "stdout_truncated": self.stdout_truncated,
            "stderr_truncated": self.stderr_truncated,
            "wall_seconds": round(self.wall_seconds, 4),
            "cpu_seconds": None if self.cpu_seconds is None else round(self.cpu_seconds, 4),
            "peak_memory_bytes": self.peak_memory_bytes,
            "limit_hit": self.limit_hit,
            "overshoot_ms": None if self.overshoot_ms is None else round(self.overshoot_ms, 1),
            "limits": self.limits.model_dump(),
            "isolation": self.isolation,
        }


@dataclass(frozen=True)
class Readiness:
    ok: bool
    reason: str
    checked_at: float
    seconds: float


def check_path(name: str) -> str:
    """A submitted file's path, relative to the job folder; ValueError when it is not one
    (absolute, ``..``, empty parts, NUL, control characters, too deep or too long)."""
    if not name or len(name) > 255 or any(ord(c) < 32 for c in name) or "\\" in name:
        raise ValueError("file names must be 1-255 printable characters, '/' between folders")
    path = PurePosixPath(name)
    if path.is_absolute() or any(part in ("", ".", "..") for part in name.split("/")):
        raise ValueError(f"{name!r} is not a relative path inside the project")
    if len(path.parts) > 16:
        raise ValueError(f"{name!r} is nested too deep")
    return str(path)


class _Output:
    """One stream: up to ``cap`` bytes kept, the rest counted and dropped."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.kept = bytearray()
        self.dropped = 0

    def take(self, data: bytes) -> None:
        room = self.cap - len(self.kept)
        if room > 0:
            self.kept += data[:room]
        self.dropped += max(0, len(data) - max(room, 0))


class Sandbox:
    """``run(command, files, limits)``: one command in a fresh box; see the module's doc."""

    def __init__(self, settings: SandboxSettings | None = None) -> None:
        self.settings = settings or SandboxSettings()
        self._ready: Readiness | None = None
        self._ready_lock = threading.Lock()
        self._version: str | None = None

    # --- the public API ----------------------------------------------------------------

    def run(
        self,
        command: Sequence[str],
        files: Mapping[str, bytes] | None = None,
        limits: RunLimits | None = None,
        *,
        stdin: bytes = b"",
    ) -> SandboxResult:
        """Run ``command`` (argv inside the box, in ``/work``) with ``files`` (relative path
        → content) in the job folder, under ``limits`` (the settings' default limits, lowered
        to their ceiling). Raises ``SandboxUnavailable`` when no box can be made and
        ``ValueError`` for a bad file set."""
        limits = (limits or self.settings.limits).within(self.settings.max_limits)
        files = dict(files or {})
        self._check_files(files)
        if not command:
            raise ValueError("empty command")
        return self._run(list(command), files, limits, stdin)

    def run_language(
        self,
        language: Language,
        files: Mapping[str, bytes],
        limits: RunLimits | None = None,
        *,
        args: Sequence[str] = (),
        stdin: bytes = b"",
    ) -> SandboxResult:
        """Run a submission of ``language``: its declared command on its file name."""
        command = [part.replace("{file}", language.file_name) for part in language.command]
        return self.run([*command, *args], files, limits, stdin=stdin)

    def readiness(self, *, fresh: bool = False) -> Readiness:
        """Whether a box can be made here: a no-op run, reused for ``readiness_ttl_seconds``."""
        with self._ready_lock:
            now = time.monotonic()
            cached = self._ready
            if (
                not fresh
                and cached is not None
                and now - cached.checked_at < self.settings.readiness_ttl_seconds
            ):
                return cached
            started = time.perf_counter()
            try:
                result = self.run(
                    [self.settings.prlimit_path, "--version"],
                    limits=RunLimits(wall_seconds=10, cpu_seconds=2),
                )
                ok = result.exit_code == 0
                reason = (
                    "a no-op sandbox run started and ended"
                    if ok
                    else (
                        f"a no-op sandbox run exited with {result.exit_code or result.signal}: "
                        + result.stderr.decode("utf-8", "replace")[:300]
                    )
                )
            except SandboxUnavailable as exc:
                ok, reason = False, str(exc)
            self._ready = Readiness(ok, reason, now, time.perf_counter() - started)
            return self._ready

    def require_ready(self) -> None:
        """Raise ``SandboxUnavailable`` when no box can be made here."""
        ready = self.readiness()
        if not ready.ok:
            raise SandboxUnavailable(ready.reason)

    def describe(self) -> dict[str, Any]:
        """The isolation every result reports."""
        return {
            "engine": self.version(),
            "namespaces": ["user", "pid", "net", "mount", "ipc", "uts", "cgroup"],
            "network": "none (own network namespace, loopback only)",
            "filesystem": f"read-only {', '.join(self.settings.ro_binds)}; tmpfs {JOB_DIR}, /tmp",
            "uid": self._uid(),
        }

    def version(self) -> str:
        if self._version is None:
            try:
                out = subprocess.run(  # noqa: S603 - a fixed argv
                    [self.settings.bwrap_path, "--version"],
                    capture_output=True,
                    timeout=10,
                    check=False,
                    env={"PATH": _PATH},
                )
                self._version = out.stdout.decode().strip() or "bubblewrap (unknown version)"
            except (OSError, subprocess.TimeoutExpired):
                return "bubblewrap (not found)"
        return self._version

    # --- how -----------------------------------------------------------------------------

    def _check_files(self, files: Mapping[str, bytes]) -> None:
        if len(files) > self.settings.max_files:
            raise ValueError(f"at most {self.settings.max_files} files")
        total = sum(len(content) for content in files.values())
        if total > self.settings.max_total_bytes:
            raise ValueError(f"the files take more than {self.settings.max_total_bytes} bytes")
        folders: set[str] = set()
        for name in files:
            check_path(name)
            folders.update(str(p) for p in PurePosixPath(name).parents if str(p) != ".")
        clash = folders & set(files)
        if clash:
            raise ValueError(f"{sorted(clash)[0]!r} is both a file and a folder")

    def _uid(self) -> int:
        return self.settings.uid if os.geteuid() == 0 else os.geteuid()

    def _argv(
        self, command: list[str], limits: RunLimits, file_fds: list[tuple[int, str]], info_fd: int
    ) -> list[str]:
        s = self.settings
        tmpfs = str(limits.tmpfs_mb * 1024 * 1024)
        argv = [
            s.bwrap_path,
            "--unshare-all",
            "--unshare-user",  # required, not "try": no user namespace, no run
            "--disable-userns",  # the code cannot make namespaces of its own
            "--die-with-parent",
            "--new-session",  # no TIOCSTI into the worker's terminal
            # The code is the PID namespace's first process: bubblewrap, its parent, reaps it
            # (with bubblewrap's own init there, that init outlives bubblewrap and is left
            # for the host's init to reap). Its end takes every other process of the box.
            "--as-pid-1",
            "--cap-drop",
            "ALL",
            "--hostname",
            "sandbox",
            "--clearenv",
            "--setenv",
            "PATH",
            _PATH,
            "--setenv",
            "HOME",
            JOB_DIR,
            "--setenv",
            "LANG",
            "C.UTF-8",
            "--setenv",
            "PYTHONDONTWRITEBYTECODE",
            "1",
            "--setenv",
            "PYTHONUNBUFFERED",
            "1",
        ]
        for path in s.ro_binds:
            argv += ["--ro-bind", path, path]
        for path, target in s.ro_bind_to.items():
            argv += ["--ro-bind", path, target]
        if "/usr" in s.ro_binds:
            # Debian's merged /usr: the usual top-level links, so /bin/sh and ld.so resolve.
            for link in ("bin", "lib", "lib64", "sbin"):
                if os.path.islink(f"/{link}"):
                    argv += ["--symlink", f"usr/{link}", f"/{link}"]
        argv += ["--proc", "/proc", "--dev", "/dev"]
        argv += ["--size", tmpfs, "--tmpfs", "/tmp"]  # noqa: S108 - the box's own tmpfs
        argv += ["--size", tmpfs, "--tmpfs", JOB_DIR]
        made: set[str] = set()
        for fd, name in file_fds:
            for parent in reversed(PurePosixPath(name).parents):
                folder = str(parent)
                if folder != "." and folder not in made:
                    argv += ["--dir", f"{JOB_DIR}/{folder}"]
                    made.add(folder)
            argv += ["--file", str(fd), f"{JOB_DIR}/{name}"]
        argv += ["--remount-ro", "/", "--chdir", JOB_DIR, "--info-fd", str(info_fd), "--"]
        mib = 1024 * 1024
        argv += [
            s.prlimit_path,
            f"--cpu={limits.cpu_seconds}:{limits.cpu_seconds + 1}",
            f"--as={limits.memory_mb * mib}",
            f"--nproc={limits.processes}",
            f"--fsize={limits.file_size_mb * mib}",
            f"--nofile={limits.open_files}",
            "--core=0",
            "--",
            *command,
        ]
        return argv

    def _run(
        self, command: list[str], files: dict[str, bytes], limits: RunLimits, stdin: bytes
    ) -> SandboxResult:
        if not os.access(self.settings.bwrap_path, os.X_OK):
            raise SandboxUnavailable(
                f"bubblewrap is not installed ({self.settings.bwrap_path}); "
                "install Debian's bubblewrap package"
            )
        fds: list[int] = []
        try:
            file_fds: list[tuple[int, str]] = []
            for name, content in files.items():
                fd = _memfd(content)
                fds.append(fd)
                file_fds.append((fd, check_path(name)))
            stdin_fd = _memfd(stdin)
            fds.append(stdin_fd)
            info_read, info_write = os.pipe()
            fds.append(info_read)  # info_write is closed by _supervise, once bwrap has it
            argv = self._argv(command, limits, file_fds, info_write)
            return self._supervise(argv, limits, stdin_fd, info_read, info_write, file_fds)
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _supervise(
        self,
        argv: list[str],
        limits: RunLimits,
        stdin_fd: int,
        info_read: int,
        info_write: int,
        file_fds: list[tuple[int, str]],
    ) -> SandboxResult:
        as_root = os.geteuid() == 0
        started = time.monotonic()
        deadline = started + limits.wall_seconds
        try:
            process = self._spawn(argv, stdin_fd, info_write, file_fds, as_root)
        finally:
            os.close(info_write)  # the box holds its own copy: EOF once bwrap closes it
        assert process.stdout is not None and process.stderr is not None

        out_fd, err_fd = process.stdout.fileno(), process.stderr.fileno()
        outputs = {out_fd: _Output(limits.output_bytes), err_fd: _Output(limits.output_bytes)}
        info = bytearray()
        box: int | None = None  # a pidfd of the box's first process
        pidfd = os.pidfd_open(process.pid)
        selector = selectors.DefaultSelector()
        for fd in outputs:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        selector.register(info_read, selectors.EVENT_READ)
        selector.register(pidfd, selectors.EVENT_READ)
        killed = False
        exited_at: float | None = None
        try:
            while True:
                now = time.monotonic()
                if exited_at is None and now >= deadline and not killed:
                    # The box's first process: the kernel then kills its whole PID namespace
                    # and bubblewrap, its parent, reaps it and exits.
                    _kill_box(box, process.pid)
                    killed = True
                elif exited_at is None and killed and now >= deadline + _DRAIN_SECONDS:
                    _kill_group(process.pid)  # bubblewrap itself did not end
                open_streams = [fd for fd in outputs if fd in selector.get_map()]
                if exited_at is not None and (not open_streams or now - exited_at > _DRAIN_SECONDS):
                    break
                if exited_at is None:
                    until = deadline if not killed else deadline + _DRAIN_SECONDS
                    timeout = max(0.01, until - now)
                else:
                    timeout = 0.05
                for key, _ in selector.select(timeout):
                    fd = int(key.fd)
                    if fd == pidfd:
                        selector.unregister(pidfd)
                        exited_at = time.monotonic()
                        continue
                    try:
                        data = os.read(fd, _READ)
                    except BlockingIOError:
                        continue
                    if not data:
                        selector.unregister(fd)
                        continue
                    if fd == info_read:
                        info += data[: 4096 - len(info)]
                        if box is None and exited_at is None:
                            box = _open_box(info)
                    else:
                        outputs[fd].take(data)
        finally:
            selector.close()
            if exited_at is None:  # only when the loop itself failed: never leave a box
                _kill_box(box, process.pid)
                _kill_group(process.pid)
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            os.close(pidfd)
            process.stdout.close()
            process.stderr.close()
        if _child_pid(info) is None:
            # bubblewrap never started the code: the namespaces (or a mount) were refused.
            reason = outputs[err_fd].kept.decode("utf-8", "replace").strip()
            if killed:
                reason = reason or "bubblewrap did not start within the wall limit"
            raise SandboxUnavailable(
                f"the sandbox could not be created: {reason[:500] or 'bubblewrap failed'}"
            )
        if box is not None:
            _wait_gone(box)
        ended = time.monotonic()
        stdout, stderr = outputs[out_fd], outputs[err_fd]
        return self._result(
            process.returncode, killed, started, ended, usage, limits, stdout, stderr
        )

    def _spawn(
        self,
        argv: list[str],
        stdin_fd: int,
        info_write: int,
        file_fds: list[tuple[int, str]],
        as_root: bool,
    ) -> subprocess.Popen[bytes]:
        # No preexec_fn (unsafe in a threaded worker): a new session for the group kill, and
        # the user switch done by subprocess itself between fork and exec.
        return subprocess.Popen(  # noqa: S603 - argv built by _argv, no shell
            argv,
            stdin=stdin_fd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=[info_write, *(fd for fd, _ in file_fds)],
            env={"PATH": _PATH},
            cwd="/",
            start_new_session=True,
            close_fds=True,
            user=self.settings.uid if as_root else None,
            group=self.settings.gid if as_root else None,
            extra_groups=[] if as_root else None,
        )

    def _result(
        self,
        returncode: int,
        killed: bool,
        started: float,
        ended: float,
        usage: Any,
        limits: RunLimits,
        stdout: _Output,
        stderr: _Output,
    ) -> SandboxResult:
        exit_code: int | None = returncode
        signame: str | None = None
        # bubblewrap exits 128+N when a signal N ended the code (as shells do).
        if killed:
            exit_code, signame = None, "SIGKILL"
        elif returncode < 0:
            exit_code, signame = None, _signal_name(-returncode)
        elif 128 < returncode < 128 + 65:
            exit_code, signame = None, _signal_name(returncode - 128)
        limit_hit = _limit_hit(killed, signame, bytes(stderr.kept), limits, usage)
        wall = ended - started
        return SandboxResult(
            exit_code=exit_code,
            signal=signame,
            stdout=bytes(stdout.kept),
            stderr=bytes(stderr.kept),
            stdout_truncated=stdout.dropped > 0,
            stderr_truncated=stderr.dropped > 0,
            wall_seconds=wall,
            cpu_seconds=None if killed else usage.ru_utime + usage.ru_stime,
            peak_memory_bytes=None if killed else usage.ru_maxrss * 1024,
            limit_hit=limit_hit,
            overshoot_ms=(wall - limits.wall_seconds) * 1000 if limit_hit == "wall" else None,
            limits=limits,
            isolation=self.describe(),
        )


def _memfd(content: bytes) -> int:
    fd = os.memfd_create("haven-sandbox", os.MFD_CLOEXEC)
    view = memoryview(content)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _kill_box(box: int | None, pgid: int) -> None:
    if box is None:  # not started yet: bubblewrap's group, and the box with it
        _kill_group(pgid)
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        signal.pidfd_send_signal(box, signal.SIGKILL)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _child_pid(info: bytes | bytearray) -> int | None:
    """The box's first process (bubblewrap's ``--info-fd`` JSON), once it is complete."""
    try:
        value = json.loads(bytes(info).decode()).get("child-pid")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None
    return int(value) if isinstance(value, int) else None


def _open_box(info: bytes | bytearray) -> int | None:
    """A pidfd of the box's first process, opened while the box still runs (its parent,
    bubblewrap, has not exited, so the pid cannot have been reused)."""
    pid = _child_pid(info)
    if pid is None:
        return None
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


def _wait_gone(fd: int, timeout: float = 5.0) -> None:
    """Until the box's first process has gone: the kernel lets it finish exiting only after
    every other process of its PID namespace is gone (and its mounts with its namespace)."""
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            if not selector.select(timeout):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                selector.select(timeout)
    finally:
        os.close(fd)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _limit_hit(
    killed: bool, signame: str | None, stderr: bytes, limits: RunLimits, usage: Any
) -> str | None:
    if killed:
        return "wall"
    if signame == "SIGXCPU" or (
        signame == "SIGKILL" and usage.ru_utime + usage.ru_stime >= limits.cpu_seconds
    ):
        return "cpu"
    if signame == "SIGXFSZ":
        return "file_size"
    text = stderr.decode("utf-8", "replace")
    for name, marker in _LIMIT_MARKERS:
        if marker.search(text):
            return name
    return None
