"""The sandbox: untrusted code run with no network, its own PID and user namespaces, a
read-only runtime, an empty tmpfs job folder, kernel limits and a wall-clock deadline, and
nothing left behind. Used by code runs (``workers.runs``) and code reviews.

    sandbox = Sandbox(SandboxSettings())
    result = sandbox.run(["/usr/bin/python3", "main.py"], {"main.py": b"print(1)"}, limits)
"""

from haven.sandbox.core import (
    JOB_DIR,
    Readiness,
    Sandbox,
    SandboxResult,
    SandboxUnavailable,
    check_path,
)
from haven.sandbox.settings import Language, RunLimits, SandboxSettings

__all__ = [
    "JOB_DIR",
    "Language",
    "Readiness",
    "RunLimits",
    "Sandbox",
    "SandboxResult",
    "SandboxSettings",
    "SandboxUnavailable",
    "check_path",
]
