"""The sandbox's settings (``HAVEN_SANDBOX_*``), validated by pydantic and reported with every
result: the limits in force, the uid that runs the code, and the languages it knows.

A language is one declared entry (interpreter command, file name, the regex that finds the
error in its output), so adding one is configuration (``HAVEN_SANDBOX_LANGUAGES``, JSON),
not code.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024

# Paths whose contents belong to the host or its secrets: never visible in a box.
_FORBIDDEN_BINDS: tuple[str, ...] = ("/", "/etc", "/root", "/home", "/run", "/proc", "/sys")
_FORBIDDEN_BINDS += ("/var", "/dev", "/" + "tmp")


class RunLimits(BaseModel):
    """What one run may take. ``memory_mb`` is address space (RLIMIT_AS), interpreter and
    libraries included; ``processes`` counts the box's processes and threads (RLIMIT_NPROC,
    counted per user namespace); ``output_bytes`` caps stdout and stderr each (the rest is
    read and dropped, and the result says ``truncated``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    wall_seconds: float = Field(default=10.0, gt=0, le=600)
    cpu_seconds: int = Field(default=5, ge=1, le=600)
    memory_mb: int = Field(default=256, ge=32, le=16384)
    processes: int = Field(default=64, ge=4, le=4096)
    file_size_mb: int = Field(default=16, ge=1, le=4096)
    open_files: int = Field(default=64, ge=16, le=4096)
    output_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * MiB)
    # The job folder (and /tmp) are tmpfs of this size each: disk filling stops here.
    tmpfs_mb: int = Field(default=64, ge=1, le=4096)

    def within(self, ceiling: RunLimits) -> RunLimits:
        """These limits, each lowered to ``ceiling``'s where it is higher."""
        mine = self.model_dump()
        top = ceiling.model_dump()
        return RunLimits(**{key: min(value, top[key]) for key, value in mine.items()})


def _absolute(value: str) -> str:
    if not value.startswith("/") or "\x00" in value:
        raise ValueError(f"{value!r} must be an absolute path")
    return value


AbsolutePath = Annotated[str, Field(min_length=2, max_length=500)]


class Language(BaseModel):
    """How to run one language. ``command`` is argv inside the box, ``{file}`` standing for
    ``file_name`` in the job folder; the submitted ``args`` follow it. ``error_regex`` finds
    the error in stderr (the last matching line): a ``type`` group and an optional
    ``message`` group, what the common-error registry matches on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    file_name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    command: list[str] = Field(min_length=1, max_length=32)
    error_regex: str = Field(min_length=1, max_length=500)
    version: str = ""

    @field_validator("command")
    @classmethod
    def _interpreter_is_absolute(cls, value: list[str]) -> list[str]:
        _absolute(value[0])
        return value

    @field_validator("error_regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        import re

        compiled = re.compile(value)
        if "type" not in compiled.groupindex:
            raise ValueError("error_regex needs a (?P<type>...) group")
        return value


PYTHON = Language(
    file_name="main.py",
    # -E -s: no PYTHON* variables, no user site (not -I: a project imports its own modules
    # from the script's folder); -B: no .pyc written.
    command=["/usr/bin/python3", "-E", "-s", "-B", "{file}"],
    # The traceback's last line: a built-in-looking name, or any CamelCase name followed by
    # ": message" (a learner's own exception class, shown as __main__.Name).
    error_regex=r"^(?:__main__\.)?(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt"
    r"|Warning)|[A-Z][\w.]*(?=:\s))(?::\s?(?P<message>.*))?$",
    version="3",
)


class SandboxSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HAVEN_SANDBOX_", extra="ignore", frozen=True)

    bwrap_path: AbsolutePath = "/usr/bin/bwrap"
    prlimit_path: AbsolutePath = "/usr/bin/prlimit"
    # When the worker runs as root (a developer's machine, CI), the box is started as this
    # unprivileged uid/gid: RLIMIT_NPROC is not enforced for root. A worker that is not
    # root starts it as itself (it cannot switch users); the box still gets a user
    # namespace of its own.
    uid: int = Field(default=61000, ge=1000, le=2**31 - 2)
    gid: int = Field(default=61000, ge=1000, le=2**31 - 2)
    # Read-only views of the host inside the box (the runtimes live under /usr).
    ro_binds: list[AbsolutePath] = ["/usr"]
    # More read-only views, each at a path of its own in the box (host path -> box path),
    # e.g. the folder holding pytest for a review's tests at /opt/pytest.
    ro_bind_to: dict[AbsolutePath, AbsolutePath] = {}
    # Limits of a run that does not ask for others, and the most any run may ask for.
    limits: RunLimits = RunLimits()
    max_limits: RunLimits = RunLimits(
        wall_seconds=60,
        cpu_seconds=30,
        memory_mb=1024,
        processes=256,
        file_size_mb=64,
        open_files=256,
        output_bytes=MiB,
        tmpfs_mb=256,
    )
    languages: dict[str, Language] = {"python": PYTHON}
    # Files of one submission, and their total size.
    max_files: int = Field(default=200, ge=1, le=2000)
    max_total_bytes: int = Field(default=4 * MiB, ge=1024, le=256 * MiB)
    # Seconds a readiness answer (a no-op run) is reused.
    readiness_ttl_seconds: float = Field(default=30.0, ge=0)

    @field_validator("bwrap_path", "prlimit_path")
    @classmethod
    def _absolute_tool(cls, value: str) -> str:
        return _absolute(value)

    @field_validator("ro_binds")
    @classmethod
    def _safe_binds(cls, value: list[str]) -> list[str]:
        for path in value:
            normal = str(PurePosixPath(_absolute(path)))
            if normal in _FORBIDDEN_BINDS or ".." in PurePosixPath(path).parts:
                raise ValueError(f"{path} may not be shown to submitted code")
        return value

    @field_validator("ro_bind_to")
    @classmethod
    def _safe_bind_targets(cls, value: dict[str, str]) -> dict[str, str]:
        cls._safe_binds(list(value))
        for target in value.values():
            parts = PurePosixPath(target).parts
            if ".." in parts or len(parts) < 2 or parts[1] in {"work", "tmp", "proc", "dev"}:
                raise ValueError(f"{target} cannot hold a view of the host in the box")
        return value

    @field_validator("languages")
    @classmethod
    def _named(cls, value: dict[str, Language]) -> dict[str, Language]:
        import re

        if not value:
            raise ValueError("declare at least one language")
        for name in value:
            if not re.fullmatch(r"[a-z][a-z0-9_+-]{0,31}", name):
                raise ValueError(f"language name {name!r}: lower-case letters, digits, _+-")
        return value

    @model_validator(mode="after")
    def _defaults_within_ceiling(self) -> SandboxSettings:
        if self.limits.within(self.max_limits) != self.limits:
            raise ValueError("HAVEN_SANDBOX_LIMITS exceed HAVEN_SANDBOX_MAX_LIMITS")
        return self
