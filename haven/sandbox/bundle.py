"""A submission's files: read safely from an uploaded zip, and kept as a zip Haven wrote.

``read_zip`` refuses what must never reach the box or the worker's disk: paths that are
absolute or climb out (``../``), symlinks and other special entries, encrypted entries, more
files than allowed, and more bytes (or a higher compression ratio) than allowed, counted
while decompressing rather than trusted from the zip's headers (zip bombs).
"""

from __future__ import annotations

import io
import stat
import zipfile
from collections.abc import Mapping

from haven.sandbox.core import check_path

_MAX_RATIO = 200  # uncompressed / compressed, per entry


class BadBundle(ValueError):
    """The upload is not an acceptable project archive; the message says why."""


def read_zip(data: bytes, *, max_files: int, max_total_bytes: int) -> dict[str, bytes]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise BadBundle("the files are not a readable zip archive") from exc
    files: dict[str, bytes] = {}
    total = 0
    with archive:
        entries = archive.infolist()
        if len(entries) > max_files * 2:
            raise BadBundle(f"the archive holds more than {max_files} files")
        for entry in entries:
            name = entry.filename
            if "\x00" in name:
                raise BadBundle("a file name holds a NUL character")
            if entry.is_dir():
                check_name(name.rstrip("/"))
                continue
            kind = stat.S_IFMT(entry.external_attr >> 16)
            if entry.create_system == 3 and kind and kind != stat.S_IFREG:
                raise BadBundle(f"{name!r} is a symlink or special file; only files are taken")
            if entry.flag_bits & 0x1:
                raise BadBundle(f"{name!r} is encrypted")
            path = check_name(name)
            if path in files:
                raise BadBundle(f"{name!r} appears twice")
            if len(files) >= max_files:
                raise BadBundle(f"the archive holds more than {max_files} files")
            budget = max_total_bytes - total
            content = _read_entry(archive, entry, budget)
            total += len(content)
            files[path] = content
    if not files:
        raise BadBundle("the archive holds no files")
    return files


def check_name(name: str) -> str:
    try:
        return check_path(name)
    except ValueError as exc:
        raise BadBundle(str(exc)) from exc


def _read_entry(archive: zipfile.ZipFile, entry: zipfile.ZipInfo, budget: int) -> bytes:
    limit = min(budget, max(entry.compress_size, 1) * _MAX_RATIO + 64 * 1024)
    out = bytearray()
    try:
        with archive.open(entry) as stream:
            while chunk := stream.read(64 * 1024):
                out += chunk
                if len(out) > limit:
                    if len(out) > budget:
                        raise BadBundle("the files expand to more than the allowed size")
                    raise BadBundle(f"{entry.filename!r} is compressed suspiciously well")
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        NotImplementedError,
        OSError,
        EOFError,
    ) as exc:
        raise BadBundle(f"{entry.filename!r} cannot be read from the archive") from exc
    return bytes(out)


def pack(files: Mapping[str, bytes]) -> bytes:
    """The files as the zip Haven keeps (names already checked)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            archive.writestr(zipfile.ZipInfo(name, date_time=(2000, 1, 1, 0, 0, 0)), files[name])
    return buffer.getvalue()


def unpack(data: bytes) -> dict[str, bytes]:
    """A zip ``pack`` wrote (still read as untrusted, with generous limits)."""
    return read_zip(data, max_files=10_000, max_total_bytes=1 << 30)
