"""The sandbox against hostile code, each case in a real bubblewrap box: no network, limits
that hold, nothing of the host readable, nothing written through a planted symlink, nothing
left running or on disk afterwards, and no run at all when no box can be made."""

from __future__ import annotations

import io
import os
import socket
import tempfile
import textwrap
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from haven.sandbox import RunLimits, Sandbox, SandboxResult, SandboxSettings, SandboxUnavailable
from haven.sandbox.bundle import BadBundle, pack, read_zip, unpack
from workers.runs.health import make_server

FAST = RunLimits(wall_seconds=5, cpu_seconds=3, memory_mb=256, processes=32, file_size_mb=8)


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    box = Sandbox(SandboxSettings())
    ready = box.readiness(fresh=True)
    assert ready.ok, ready.reason
    return box


def run_py(sandbox: Sandbox, code: str, limits: RunLimits = FAST, **files: bytes) -> SandboxResult:
    python = sandbox.settings.languages["python"]
    return sandbox.run_language(
        python, {"main.py": textwrap.dedent(code).encode(), **files}, limits
    )


def out(result: SandboxResult) -> str:
    return result.stdout.decode() + result.stderr.decode()


def box_processes(marker: str | None = None) -> list[str]:
    """Processes of the sandbox's uid (when the tests run as root, the box has a uid of its
    own) or whose command line holds ``marker``."""
    uid = SandboxSettings().uid if os.geteuid() == 0 else None
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        real_uid = int(
            next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1]
        )
        if (uid is not None and real_uid == uid) or (marker and marker in cmdline):
            found.append(f"{entry.name} uid={real_uid} {cmdline[:80]}")
    return found


def test_a_snippet_runs_and_reports_its_output_usage_and_the_limits_in_force(
    sandbox: Sandbox,
) -> None:
    result = run_py(
        sandbox, "import sys; print('hello', sys.argv[1:]); print('warn', file=sys.stderr)"
    )
    assert result.exit_code == 0 and result.signal is None and result.limit_hit is None
    assert result.stdout == b"hello []\n" and result.stderr == b"warn\n"
    assert result.cpu_seconds is not None and result.peak_memory_bytes
    answered = sandbox.run_language(
        sandbox.settings.languages["python"],
        {"main.py": b"import sys\nname = input()\nprint(f'hi {name}', sys.argv[1:])"},
        FAST,
        args=["--loud", "x y"],
        stdin=b"Ada\n",
    )
    assert answered.stdout == b"hi Ada ['--loud', 'x y']\n", out(answered)
    report = result.report()
    assert report["limits"]["memory_mb"] == 256 and report["limits"]["processes"] == 32
    assert "bubblewrap" in report["isolation"]["engine"]
    assert "net" in report["isolation"]["namespaces"]


def test_network_to_loopback_and_to_postgresql_fails(sandbox: Sandbox) -> None:
    with socket.create_connection(("127.0.0.1", 5432), timeout=5):
        pass  # PostgreSQL listens on the host...
    result = run_py(
        sandbox,
        """
        import socket
        targets = [("127.0.0.1", 5432), ("127.0.0.1", 6379), ("10.0.2.2", 5432), ("8.8.8.8", 53)]
        for host, port in targets:
            try:
                socket.create_connection((host, port), timeout=2)
                print("CONNECTED", host, port)
            except OSError as exc:
                print("refused", host, port, exc.errno)
        """,
    )
    assert result.exit_code == 0, out(result)
    assert b"CONNECTED" not in result.stdout  # ...but not for the box
    assert result.stdout.count(b"refused") == 4


def test_a_fork_bomb_is_stopped_by_the_process_limit(sandbox: Sandbox) -> None:
    result = run_py(
        sandbox,
        """
        import os
        while True:
            os.fork()
        """,
    )
    assert result.limit_hit == "processes", out(result)
    assert result.limit_hit != "wall"
    assert box_processes() == []


def test_a_1_gib_allocation_is_stopped(sandbox: Sandbox) -> None:
    result = run_py(sandbox, "data = bytearray(1 << 30)\nprint('allocated', len(data))")
    assert result.limit_hit == "memory" and b"MemoryError" in result.stderr
    assert b"allocated" not in result.stdout


@pytest.mark.slow
def test_an_infinite_loop_is_killed_at_the_wall_limit_with_its_overshoot(
    sandbox: Sandbox,
) -> None:
    limits = FAST.model_copy(update={"wall_seconds": 1.0, "cpu_seconds": 30})
    result = run_py(sandbox, "while True:\n    pass", limits)
    assert result.limit_hit == "wall" and result.signal == "SIGKILL" and result.exit_code is None
    assert result.overshoot_ms is not None and result.overshoot_ms >= 0
    print(f"wall limit 1.0 s: killed and reaped {result.overshoot_ms:.1f} ms after it")
    assert box_processes() == []


def test_the_cpu_limit_ends_a_busy_loop(sandbox: Sandbox) -> None:
    limits = FAST.model_copy(update={"wall_seconds": 20, "cpu_seconds": 1})
    result = run_py(sandbox, "while True:\n    pass", limits)
    assert result.limit_hit == "cpu", result.report()


def test_writing_a_1_gib_file_is_stopped(sandbox: Sandbox) -> None:
    result = run_py(
        sandbox,
        """
        chunk = b"x" * (1 << 20)
        written = 0
        try:
            with open("/tmp/big.bin", "wb") as f:
                for _ in range(1024):
                    f.write(chunk)
                    written += 1
        except OSError as exc:
            print("/tmp stopped after", written, "MiB:", exc.strerror)
        with open("big.bin", "wb") as f:
            for _ in range(1024):
                f.write(chunk)
        """,
    )
    assert result.limit_hit == "file_size", out(result)
    assert result.stdout == b"/tmp stopped after 8 MiB: File too large\n"
    assert b"OSError: [Errno 27] File too large" in result.stderr
    # ...and the job folder's own size stops a project that writes many smaller files.
    many = run_py(
        sandbox,
        """
        chunk = b"x" * (1 << 20)
        try:
            for i in range(1024):
                with open(f"part{i}", "wb") as f:
                    for _ in range(4):
                        f.write(chunk)
        except OSError as exc:
            print("stopped at part", i, exc.strerror)
        """,
        FAST.model_copy(update={"tmpfs_mb": 32}),
    )
    assert b"No space left on device" in many.stdout, out(many)


def test_the_hosts_secrets_environment_and_files_are_not_readable(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = f"s3cret-{uuid.uuid4().hex}"
    monkeypatch.setenv("HAVEN_DATABASE_URL", f"postgresql://haven:{secret}@db/haven")
    secrets_file = tmp_path / "secrets" / "jwt_keys"
    secrets_file.parent.mkdir()
    secrets_file.write_text(secret)
    worker_file = Path(__file__).resolve()
    result = run_py(
        sandbox,
        f"""
        import os, glob
        print("env", dict(os.environ))
        for path in ("/etc/shadow", "/etc/passwd", "/proc/1/environ", "/proc/self/environ",
                     "/run/secrets", {str(secrets_file)!r}, {str(worker_file)!r}, "/root",
                     "/home", "/var/lib/postgresql"):
            try:
                if os.path.isdir(path):
                    print(path, "LISTED", os.listdir(path))
                else:
                    with open(path, "rb") as f:
                        print(path, "READ", f.read())
            except OSError as exc:
                print(path, "refused", exc.strerror)
        print("procs", sorted(p for p in os.listdir("/proc") if p.isdigit()))
        """,
    )
    text = out(result)
    assert result.exit_code == 0, text
    assert secret not in text and "HAVEN_" not in text
    assert "READ" not in text.replace("/proc/1/environ READ", "").replace(
        "/proc/self/environ READ", ""
    ), text
    assert "LISTED" not in text
    # The box's own environment is all there is: PATH, HOME, LANG and Python's two flags.
    env_line = next(line for line in text.splitlines() if line.startswith("env"))
    assert "PATH" in env_line and "/work" in env_line
    # Its only process is itself: the worker's processes are not in its PID namespace.
    assert "procs ['1']" in text


def test_a_symlink_planted_in_the_box_does_not_make_the_worker_write_through_it(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    canary = tmp_path / "worker-file.txt"
    canary.write_text("original")
    planted = run_py(
        sandbox,
        f"""
        import os
        for name in ("out.txt", "main.py.orig", "result.json"):
            os.symlink({str(canary)!r}, name)
        os.symlink("/proc/self/root/etc", "etc-link")
        try:
            with open("out.txt", "w") as f:
                f.write("overwritten from the box")
        except OSError as exc:
            print("write through link:", exc.strerror)
        print(sorted(os.listdir(".")))
        """,
    )
    assert b"write through link: No such file or directory" in planted.stdout, out(planted)
    # The next run gets a fresh job folder: the links are gone, and the worker wrote nothing.
    fresh = run_py(sandbox, "import os; print(sorted(os.listdir('.')))", **{"out.txt": b"input"})
    assert fresh.stdout == b"['main.py', 'out.txt']\n"
    assert canary.read_text() == "original"


def test_a_daemon_that_double_forks_and_calls_setsid_is_gone_after_the_run(
    sandbox: Sandbox,
) -> None:
    marker = f"haven-daemon-{uuid.uuid4().hex}"
    result = run_py(
        sandbox,
        f"""
        import os, sys, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                sleeper = [sys.executable, "-c", "import time; time.sleep(120)", {marker!r}]
                os.execv(sys.executable, sleeper)
            os._exit(0)
        time.sleep(0.3)
        print("parent leaves its daemon behind")
        """,
    )
    assert result.exit_code == 0, out(result)
    assert box_processes(marker) == []


def test_nothing_of_a_run_is_left_on_the_host(sandbox: Sandbox) -> None:
    def snapshot() -> set[str]:
        seen = set()
        for folder in (tempfile.gettempdir(), "/dev/shm", "/var/tmp"):
            if os.path.isdir(folder):
                seen.update(f"{folder}/{name}" for name in os.listdir(folder))
        return seen

    mounts_before = Path("/proc/self/mounts").read_text()
    files_before = snapshot()
    result = run_py(
        sandbox,
        """
        import os
        os.makedirs("pkg/sub")
        for path in ("pkg/sub/data.txt", "/tmp/scratch.txt", "leftover.bin"):
            with open(path, "w") as f:
                f.write("left behind?")
        print(sorted(os.listdir(".")))
        """,
    )
    assert result.stdout == b"['leftover.bin', 'main.py', 'pkg']\n", out(result)
    assert snapshot() == files_before
    assert Path("/proc/self/mounts").read_text() == mounts_before
    assert box_processes() == []
    # The next run's job folder holds its own files only.
    again = run_py(sandbox, "import os; print(sorted(os.listdir('.')), os.listdir('/tmp'))")
    assert again.stdout == b"['main.py'] []\n"


def test_output_over_its_cap_is_truncated_and_says_so(sandbox: Sandbox) -> None:
    limits = FAST.model_copy(update={"output_bytes": 4096})
    result = run_py(
        sandbox, "print('x' * 100000)\nimport sys; print('tail', file=sys.stderr)", limits
    )
    assert len(result.stdout) == 4096 and result.stdout_truncated
    assert result.stderr == b"tail\n" and not result.stderr_truncated


def test_files_of_a_project_are_in_the_job_folder_and_the_runtime_is_read_only(
    sandbox: Sandbox,
) -> None:
    result = run_py(
        sandbox,
        """
        import helper, os
        print(helper.greet(), open("data/input.txt").read())
        try:
            open("/usr/lib/evil", "w")
        except OSError as exc:
            print("runtime:", exc.strerror)
        """,
        **{"helper.py": b"def greet():\n    return 'hi from helper'\n", "data/input.txt": b"42"},
    )
    assert result.stdout == b"hi from helper 42\nruntime: Read-only file system\n", out(result)


def test_no_box_no_run_a_host_without_bubblewrap_refuses_with_the_reason() -> None:
    missing = Sandbox(SandboxSettings(bwrap_path="/nonexistent/bwrap"))
    with pytest.raises(SandboxUnavailable, match="bubblewrap is not installed"):
        missing.run(["/usr/bin/python3", "-c", "print(1)"])
    ready = missing.readiness(fresh=True)
    assert not ready.ok and "bubblewrap is not installed" in ready.reason
    # A bwrap that cannot create the namespaces (here: one that always fails) runs nothing.
    refusing = Sandbox(SandboxSettings(bwrap_path="/usr/bin/false"))
    with pytest.raises(SandboxUnavailable, match="could not be created"):
        refusing.run(["/usr/bin/python3", "-c", "print(1)"])


def test_the_runners_readyz_proves_a_box_can_start_or_says_why_not(sandbox: Sandbox) -> None:
    import json
    import threading
    import urllib.error
    import urllib.request

    def get(box: Sandbox, path: str) -> tuple[int, dict[str, object]]:
        server = make_server(box, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
        finally:
            server.shutdown()
            server.server_close()

    status, body = get(sandbox, "/readyz")
    assert status == 200 and body["status"] == "ready"
    status, body = get(Sandbox(SandboxSettings(bwrap_path="/nonexistent/bwrap")), "/readyz")
    assert status == 503
    assert "bubblewrap is not installed" in body["checks"]["sandbox"]["reason"]  # type: ignore[index]


def test_settings_refuse_a_root_box_host_paths_and_limits_past_their_ceiling() -> None:
    with pytest.raises(ValidationError):
        SandboxSettings(uid=0)
    for path in ("/", "/etc", "/run", "/usr/../etc"):
        with pytest.raises(ValidationError):
            SandboxSettings(ro_binds=[path])
    with pytest.raises(ValidationError):
        SandboxSettings(limits=RunLimits(wall_seconds=120))
    with pytest.raises(ValidationError):
        SandboxSettings(languages={"Py thon": SandboxSettings().languages["python"]})
    # A run asking for more than the ceiling gets the ceiling.
    assert RunLimits(memory_mb=8000).within(SandboxSettings().max_limits).memory_mb == 1024


def _zip(entries: dict[str, bytes], symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.create_system = 3
            info.external_attr = (0o120777) << 16
            archive.writestr(info, "/etc/passwd")
    return buffer.getvalue()


def test_project_archives_are_refused_when_hostile() -> None:
    def read(data: bytes) -> dict[str, bytes]:
        return read_zip(data, max_files=20, max_total_bytes=1 << 20)

    assert read(_zip({"main.py": b"print(1)", "pkg/a.py": b""})) == {
        "main.py": b"print(1)",
        "pkg/a.py": b"",
    }
    for bad in (
        _zip({"../escape.py": b"x"}),
        _zip({"/etc/cron.d/x": b"x"}),
        _zip({"a/../../b.py": b"x"}),
        _zip({"main.py": b"x"}, symlink="link"),
        _zip({f"f{i}.py": b"" for i in range(21)}),
        _zip({"bomb.txt": b"0" * (2 << 20)}),
        b"not a zip",
        b"",
    ):
        with pytest.raises(BadBundle):
            read(bad)
    assert unpack(pack({"main.py": b"x", "d/e.txt": b"y"})) == {"main.py": b"x", "d/e.txt": b"y"}


@pytest.fixture(autouse=True)
def _no_box_left(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    assert box_processes() == [], "a process of the sandbox survived the test"
