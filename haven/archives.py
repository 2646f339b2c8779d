"""Zip archives from untrusted submitters, read without trusting a byte of them.

``inspect`` reads only the central directory and decides, before anything is extracted, what
the archive is: it refuses the whole archive when it is hostile by construction (not a zip,
too many entries, a path that is absolute or climbs out with ``..``, an entry whose declared
compression ratio is a zip bomb's, more declared bytes than the limit), and lists as skipped,
with the reason, what is merely not for review (symlinks and special files, archives inside the
archive, encrypted entries, files over the per-file limit, types outside the allowed globs).

``extract`` writes the entries ``inspect`` kept into an empty folder of the caller's, counting
the bytes it really inflates (a central directory can lie about sizes) and creating every file
with ``O_EXCL | O_NOFOLLOW`` under folders it made itself: no symlink is ever created or
followed, and nothing is written outside the folder.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import stat
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from haven.errors import BadRequest

READ_SIZE = 64 * 1024
# Archives and compressed files: never extracted from a submission (an archive in an archive
# is how bombs and traversals hide from a one-level check).
NESTED_SUFFIXES = (
    ".zip", ".jar", ".war", ".whl", ".egg", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".zst",
    ".7z", ".rar", ".apk", ".nupkg",
)  # fmt: skip
NESTED_MAGIC = (
    b"PK\x03\x04", b"PK\x05\x06", b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"7z\xbc\xaf", b"Rar!",
)  # fmt: skip


@dataclass(frozen=True)
class ArchiveLimits:
    max_entries: int
    max_file_bytes: int
    max_total_bytes: int
    max_ratio: float
    max_path_length: int
    allowed_globs: Sequence[str] = ("*",)


class ArchiveRejected(BadRequest):
    """The archive as a whole is refused; ``part`` names the form field it came in."""

    def __init__(self, part: str, message: str, code: str) -> None:
        super().__init__(f"{part}: {message}", code=code)
        self.part = part


@dataclass(frozen=True)
class Entry:
    path: str  # normalised, relative, POSIX
    size: int  # declared uncompressed size
    compressed: int
    info: zipfile.ZipInfo = field(repr=False, compare=False)


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass
class Inventory:
    part: str
    entries: list[Entry]
    skipped: list[Skipped]

    @property
    def declared_bytes(self) -> int:
        return sum(entry.size for entry in self.entries)


def _safe_path(part: str, raw: str, limits: ArchiveLimits) -> str:
    if "\x00" in raw:
        raise ArchiveRejected(part, "an entry name contains a NUL character", "archive.unsafe_path")
    name = raw.replace("\\", "/")
    if len(name) > limits.max_path_length:
        raise ArchiveRejected(
            part,
            f"an entry name is longer than {limits.max_path_length} characters",
            "archive.unsafe_path",
        )
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ArchiveRejected(part, f"absolute path {raw[:200]!r}", "archive.unsafe_path")
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveRejected(
            part, f"path {raw[:200]!r} climbs out of the archive", "archive.unsafe_path"
        )
    return "/".join(parts)


def _kind(info: zipfile.ZipInfo) -> str | None:
    """None for a regular file or a folder; what else it is otherwise. Zips made on Unix keep
    the file mode in the top 16 bits of ``external_attr`` (some tools leave the type bits 0)."""
    mode = info.external_attr >> 16
    if info.create_system != 3 or not stat.S_IFMT(mode):
        return None
    if stat.S_ISLNK(mode):
        return "symlink (never followed)"
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return "special file"


def _allowed(path: str, globs: Sequence[str]) -> bool:
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(name, g) or fnmatch.fnmatchcase(path, g) for g in globs)


def inspect(archive: Path, part: str, limits: ArchiveLimits) -> Inventory:
    """What ``archive`` holds and what of it may be extracted; raises ``ArchiveRejected``."""
    if not zipfile.is_zipfile(archive):
        raise ArchiveRejected(part, "not a zip archive", "archive.not_zip")
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
        raise ArchiveRejected(part, f"unreadable zip archive ({exc})", "archive.not_zip") from exc
    if len(infos) > limits.max_entries:
        raise ArchiveRejected(
            part,
            f"{len(infos)} entries, over the limit of {limits.max_entries}",
            "archive.too_many_entries",
        )
    entries: list[Entry] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    declared = 0
    for info in infos:
        path = _safe_path(part, info.filename, limits)
        if not path or info.is_dir():
            continue
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > 1024 * 1024 and ratio > limits.max_ratio:
            raise ArchiveRejected(
                part,
                f"{path!r} expands {ratio:.0f} times (limit {limits.max_ratio:g}): a zip bomb",
                "archive.ratio",
            )
        other = _kind(info)
        if other is not None:
            skipped.append(Skipped(path, other))
            continue
        if info.flag_bits & 0x1:
            skipped.append(Skipped(path, "encrypted"))
            continue
        if path.lower().endswith(NESTED_SUFFIXES):
            skipped.append(Skipped(path, "archive inside the archive (not extracted)"))
            continue
        if path.casefold() in seen:
            skipped.append(Skipped(path, "duplicate name"))
            continue
        if not _allowed(path, limits.allowed_globs):
            skipped.append(Skipped(path, "not an allowed file type"))
            continue
        if info.file_size > limits.max_file_bytes:
            skipped.append(
                Skipped(path, f"{info.file_size} bytes, over the {limits.max_file_bytes} limit")
            )
            continue
        declared += info.file_size
        if declared > limits.max_total_bytes:
            raise ArchiveRejected(
                part,
                f"expands to more than {limits.max_total_bytes} bytes",
                "archive.too_large_uncompressed",
            )
        seen.add(path.casefold())
        entries.append(Entry(path, info.file_size, info.compress_size, info))
    return Inventory(part, entries, skipped)


def _open_new(root_fd: int, relative: str) -> int:
    """Create ``relative`` under the folder ``root_fd``, making its parent folders, without
    following any link: every component is opened relative to the one before it."""
    *folders, name = relative.split("/")
    fd = os.dup(root_fd)
    try:
        for folder in folders:
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder, 0o700, dir_fd=fd)
            next_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        return os.open(name, flags, 0o600, dir_fd=fd)
    finally:
        os.close(fd)


def extract(archive: Path, inventory: Inventory, dest: Path, limits: ArchiveLimits) -> Inventory:
    """Write the kept entries into ``dest`` (an empty folder); the inventory of what was
    written (a file found to be an archive by its first bytes is skipped after all)."""
    root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    written: list[Entry] = []
    skipped = list(inventory.skipped)
    total = 0
    try:
        with zipfile.ZipFile(archive) as zf:
            for entry in inventory.entries:
                with zf.open(entry.info) as source:
                    head = source.read(READ_SIZE)
                    if head.startswith(NESTED_MAGIC) or head[257:262] == b"ustar":
                        skipped.append(Skipped(entry.path, "archive inside the archive"))
                        continue
                    fd = _open_new(root_fd, entry.path)
                    size = 0
                    with os.fdopen(fd, "wb") as target:
                        chunk = head
                        while chunk:
                            size += len(chunk)
                            total += len(chunk)
                            if size > max(entry.size, 0) or size > limits.max_file_bytes:
                                raise ArchiveRejected(
                                    inventory.part,
                                    f"{entry.path!r} inflates past its declared size",
                                    "archive.ratio",
                                )
                            if total > limits.max_total_bytes:
                                raise ArchiveRejected(
                                    inventory.part,
                                    f"expands to more than {limits.max_total_bytes} bytes",
                                    "archive.too_large_uncompressed",
                                )
                            target.write(chunk)
                            chunk = source.read(READ_SIZE)
                written.append(entry)
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        EOFError,
        OSError,
        ValueError,
        NotImplementedError,
        RuntimeError,
    ) as exc:
        raise ArchiveRejected(
            inventory.part, f"unreadable entry ({exc})", "archive.corrupt"
        ) from exc
    finally:
        os.close(root_fd)
    return Inventory(inventory.part, written, skipped)
