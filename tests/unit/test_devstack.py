"""`haven up`'s own parts, with real child processes: the per-installation signing key and
the supervisor that reports and restarts a child that dies."""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path

import httpx
import pytest
import typer
from typer.testing import CliRunner

from devstack.state import signing_keys
from devstack.supervisor import Service, Supervisor
from haven.cli import add_plugin_commands
from haven.settings import DEV_JWT_KEYS, AuthSettings
from tests.fixtures.services import free_port


def test_the_signing_key_is_made_once_per_installation_and_kept_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys, created = signing_keys(tmp_path / "one")
    assert created
    folder = tmp_path / "one" / "secrets"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ("haven_jwt_keys", "haven_jwt_active_kid"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    again, created_again = signing_keys(tmp_path / "one")
    assert (again, created_again) == (keys, False)  # a restart keeps its tokens valid
    other, _ = signing_keys(tmp_path / "two")
    assert other.active_kid != keys.active_kid and other.keys != keys.keys
    # The services read them as they are given: a valid key set, not the published one.
    monkeypatch.delenv("HAVEN_JWT_KEYS", raising=False)
    monkeypatch.delenv("HAVEN_JWT_ACTIVE_KID", raising=False)
    monkeypatch.setenv("HAVEN_SECRETS_DIR", str(folder))  # as a `haven` command run by hand
    settings = AuthSettings()
    assert settings.jwt_active_kid == keys.active_kid
    assert settings.signing_keys() == json.loads(keys.keys)
    assert len(settings.signing_keys()[keys.active_kid]) >= 32
    assert not set(settings.signing_keys().values()) & set(json.loads(DEV_JWT_KEYS).values())


class Supervised:
    def __init__(self, tmp_path: Path) -> None:
        self.messages: list[str] = []
        self.supervisor = Supervisor(
            tmp_path, tmp_path / "log", threading.Event(), self.messages.append
        )
        self.watcher: threading.Thread | None = None

    def watch(self) -> None:
        self.watcher = threading.Thread(target=self.supervisor.watch, daemon=True)
        self.watcher.start()

    def stop(self) -> None:
        """As the launcher does on Ctrl-C: stop watching first, then stop the children."""
        self.supervisor.stop.set()
        if self.watcher is not None:
            self.watcher.join(timeout=10)
        self.supervisor.stop_all()


@pytest.fixture()
def supervised(tmp_path: Path) -> Iterator[Supervised]:
    supervised = Supervised(tmp_path)
    try:
        yield supervised
    finally:
        supervised.stop()


def _wait_for(messages: list[str], text: str, count: int = 1) -> None:
    deadline = time.monotonic() + 60
    while sum(text in message for message in messages) < count:
        assert time.monotonic() < deadline, f"no {text!r} in {messages}"
        time.sleep(0.1)


def test_a_child_that_dies_is_reported_with_its_log_and_comes_back(
    supervised: Supervised,
) -> None:
    supervisor, messages = supervised.supervisor, supervised.messages
    port = free_port()
    web = Service(
        "web",
        [sys.executable, "-u", "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        f"http://127.0.0.1:{port}/",
    )
    supervisor.start(web, timeout=60)
    assert web.process is not None
    first_pid = web.process.pid
    supervised.watch()

    os.kill(first_pid, signal.SIGKILL)
    _wait_for(messages, "web exited (killed by SIGKILL)")
    report = next(m for m in messages if "web exited" in m)
    assert "Serving HTTP on 127.0.0.1" in report  # the tail of its log says what it was doing
    assert "restarting web in 1s" in report
    _wait_for(messages, "web is back and ready")
    assert web.process.pid != first_pid
    assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200

    supervised.stop()
    assert web.process.poll() is not None  # stopped with the launcher
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/", timeout=2)


def test_a_child_that_keeps_failing_is_retried_ever_more_slowly(supervised: Supervised) -> None:
    supervisor, messages = supervised.supervisor, supervised.messages
    crash = Service("crash", [sys.executable, "-c", "print('config is broken'); exit(3)"], "")
    supervisor.start(crash)
    supervised.watch()
    _wait_for(messages, "crash exited (exit code 3)", count=3)
    reports = [m for m in messages if "crash exited" in m]
    assert all("config is broken" in report for report in reports)
    delays = [report.rsplit("restarting crash in ", 1)[1] for report in reports[:3]]
    assert delays == ["1s", "2s", "4s"]


def test_haven_up_reaches_the_cli_only_where_the_launcher_is_installed() -> None:
    """The service images leave devstack/ out but keep the project's entry points: their
    `haven` CLI still works, without `up`; a broken plugin is not hidden."""
    shipped = EntryPoint(name="up", value="devstack.cli:up", group="haven.cli")
    left_out = EntryPoint(name="gone", value="devstack_not_shipped.cli:up", group="haven.cli")
    app = typer.Typer()
    app.command("version")(lambda: None)
    add_plugin_commands(app, [shipped, left_out])
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    assert "Run Haven locally" in result.output  # the listing shows `up` with its summary
    assert "gone" not in result.output
    assert "--api-port" in CliRunner().invoke(app, ["up", "--help"]).output

    broken = EntryPoint(name="broken", value="devstack.cli:no_such_command", group="haven.cli")
    with pytest.raises(AttributeError):
        add_plugin_commands(typer.Typer(), [broken])
