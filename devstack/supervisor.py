"""The child processes of ``haven up``: started in order, watched, restarted when they die.

A child that exits is reported at once, with the last lines of its log, and started again
after a delay that doubles with each quick failure (1 s, 2 s, 4 s ... at most 30 s; back to
1 s once it has stayed up for a minute). It is never given up on: a user who left Haven
running expects it to come back by itself, and each failure is printed with its reason.
Children run in sessions of their own, so a Ctrl-C reaches only the launcher, which stops
them in the reverse order of their start (the API before the services it calls); on Linux a
child also gets SIGTERM if the launcher itself is killed.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
# A child that stayed up this long failed for a new reason: its next restart is quick again.
STABLE_SECONDS = 60.0
POLL_SECONDS = 0.5
STOP_TIMEOUT_SECONDS = 20.0
TAIL_LINES = 15


class Stopped(Exception):
    """The launcher was asked to stop (Ctrl-C, SIGTERM) while it was starting."""


class StartFailed(Exception):
    """A child did not become ready; the message says which and why, with its log."""


@dataclass
class Service:
    name: str
    argv: list[str]
    # Answers 200 once the child serves; empty for a child without an HTTP endpoint.
    ready_url: str
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    quick_failures: int = 0
    restart_at: float | None = None  # set while waiting out the backoff
    recovering: bool = False  # restarted, not ready yet


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the launcher dies, whatever killed it."""
    if sys.platform == "linux":
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Supervisor:
    def __init__(
        self,
        cwd: Path,
        log_dir: Path,
        stop: threading.Event,
        echo: Callable[[str], None],
    ) -> None:
        self.cwd = cwd
        self.log_dir = log_dir
        self.stop = stop
        self.echo = echo
        self.services: list[Service] = []

    def log_path(self, service: Service) -> Path:
        return self.log_dir / f"{service.name}.log"

    def tail(self, service: Service, lines: int = TAIL_LINES) -> str:
        path = self.log_path(service)
        if not path.exists():
            return "  (no log)"
        with path.open("rb") as log:
            log.seek(max(0, path.stat().st_size - 16_384))
            text = log.read().decode(errors="replace")
        return "\n".join(f"  | {line}" for line in text.splitlines()[-lines:])

    def _spawn(self, service: Service) -> None:
        with self.log_path(service).open("ab") as log:  # the child keeps its own handle
            service.process = subprocess.Popen(  # noqa: S603 - argv is built by the launcher
                service.argv,
                cwd=self.cwd,
                env={**os.environ, **service.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # the launcher runs no threads of its own
            )
        service.started_at = time.monotonic()

    def _ready(self, service: Service, timeout: float = 2.0) -> bool:
        if not service.ready_url:
            return True
        try:
            return httpx.get(service.ready_url, timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self, service: Service, timeout: float = 600.0) -> None:
        """Start ``service`` and wait until it is ready; it is supervised from then on."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._spawn(service)
        self.services.append(service)
        assert service.process is not None
        deadline = time.monotonic() + timeout
        while not self._ready(service):
            if self.stop.is_set():
                raise Stopped
            code = service.process.poll()
            if code is not None:
                raise StartFailed(
                    f"{service.name} exited while starting ({_exit_reason(code)}); "
                    f"last lines of {self.log_path(service)}:\n{self.tail(service)}"
                )
            if time.monotonic() > deadline:
                raise StartFailed(
                    f"{service.name} was not ready within {timeout:.0f}s "
                    f"({service.ready_url}); last lines of {self.log_path(service)}:\n"
                    f"{self.tail(service)}"
                )
            self.stop.wait(0.3)
        self.echo(
            f"{service.name} started (pid {service.process.pid}"
            f"{', ' + service.ready_url if service.ready_url else ''})"
        )

    def watch(self) -> None:
        """Until asked to stop: report each child that exits and start it again."""
        while not self.stop.wait(POLL_SECONDS):
            for service in self.services:
                self._check(service)

    def _check(self, service: Service) -> None:
        now = time.monotonic()
        if service.restart_at is not None:
            if now >= service.restart_at:
                service.restart_at = None
                self._spawn(service)
                service.recovering = True
                assert service.process is not None
                self.echo(f"{service.name} restarted (pid {service.process.pid})")
            return
        assert service.process is not None
        code = service.process.poll()
        if code is None:
            if service.recovering and self._ready(service, timeout=1.0):
                service.recovering = False
                self.echo(f"{service.name} is back and ready")
            return
        uptime = now - service.started_at
        if uptime >= STABLE_SECONDS:
            service.quick_failures = 0
        delay = min(FIRST_BACKOFF_SECONDS * 2**service.quick_failures, MAX_BACKOFF_SECONDS)
        service.quick_failures += 1
        service.restart_at = now + delay
        self.echo(
            f"\n{service.name} exited ({_exit_reason(code)}) after {uptime:.0f}s; "
            f"last lines of {self.log_path(service)}:\n{self.tail(service)}\n"
            f"restarting {service.name} in {delay:.0f}s"
        )

    def stop_all(self) -> None:
        """Stop the children, the last started first; kill those that do not stop in time."""
        running = [s for s in reversed(self.services) if s.process and s.process.poll() is None]
        for service in running:
            assert service.process is not None
            try:  # the whole group: emb's replica processes too
                os.killpg(service.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            try:
                service.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.echo(f"{service.name} did not stop in {STOP_TIMEOUT_SECONDS:.0f}s: killed")
                os.killpg(service.process.pid, signal.SIGKILL)
                service.process.wait(timeout=10)
