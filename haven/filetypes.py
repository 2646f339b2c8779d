"""Which files Haven ingests, told by their bytes first and their name second.

The API checks this at upload (415 for anything else) and the worker's extractor dispatches
on the same names, so both always agree.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from pathlib import PurePath
from types import MappingProxyType

PLAIN = "text/plain"
MARKDOWN = "text/markdown"
HTML = "text/html"
PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"

SUPPORTED_TYPES: Mapping[str, str] = MappingProxyType(
    {PLAIN: "text", MARKDOWN: "markdown", HTML: "html", PDF: "pdf", DOCX: "docx"}
)
_BY_EXTENSION = {
    ".txt": PLAIN, ".text": PLAIN, ".log": PLAIN, ".csv": PLAIN,
    ".md": MARKDOWN, ".markdown": MARKDOWN,
    ".html": HTML, ".htm": HTML, ".xhtml": HTML,
    ".pdf": PDF,
    ".docx": DOCX,
}
# Magic numbers of formats that are surely not text (a .txt name does not make them text).
_BINARY_MAGIC = (b"MZ", b"\x7fELF", b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"\x1f\x8b",
                 b"Rar!", b"7z\xbc\xaf", b"\xd0\xcf\x11\xe0", b"OggS", b"ID3", b"fLaC")


class UnsupportedType(Exception):
    def __init__(self, detail: str) -> None:
        supported = ", ".join(sorted(SUPPORTED_TYPES))
        super().__init__(f"{detail}; supported types: {supported}")


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return True
    if head.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        return True  # byte-order marks of UTF-8/16
    if b"\x00" in head:
        return False
    control = sum(1 for b in head if b < 9 or 13 < b < 32)
    return control / len(head) < 0.05


def _is_docx(head: bytes) -> bool:
    if not head.startswith(b"PK\x03\x04"):
        return False
    if b"word/" in head or b"[Content_Types].xml" in head:
        return True
    try:
        with zipfile.ZipFile(io.BytesIO(head)) as archive:
            return any(name.startswith("word/") for name in archive.namelist())
    except zipfile.BadZipFile:
        return False


def detect_mime(filename: str | None, head: bytes, declared: str | None = None) -> str:
    """The supported type of a file from its first bytes, name and declared type; raises
    ``UnsupportedType`` for anything else."""
    if head.startswith(b"%PDF-"):
        return PDF
    if head.startswith(b"PK\x03\x04"):
        if _is_docx(head) or (filename or "").lower().endswith(".docx"):
            return DOCX
        raise UnsupportedType("a zip archive that is not a .docx document")
    if head.startswith(_BINARY_MAGIC):
        raise UnsupportedType("a binary file")
    by_name = _BY_EXTENSION.get(PurePath(filename or "").suffix.lower())
    if by_name in (PDF, DOCX):
        raise UnsupportedType(f"the file is named {filename!r} but is not a {SUPPORTED_TYPES[by_name]}")
    if not _looks_like_text(head):
        raise UnsupportedType("a binary file")
    if by_name is not None:
        return by_name
    lowered = head[:2048].lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html")):
        return HTML
    base = (declared or "").split(";")[0].strip().lower()
    if base in SUPPORTED_TYPES:
        return base
    if base in ("", "application/octet-stream") or base.startswith("text/"):
        return PLAIN
    raise UnsupportedType(f"declared as {base}")
