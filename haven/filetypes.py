"""Which files Haven ingests, told by their bytes first and their name second.

The API checks this at upload (415 for anything else) and the worker's extractor dispatches on
the same names, so both always agree about a file.
"""

from __future__ import annotations

import codecs
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Final

PLAIN: Final = "text/plain"
MARKDOWN: Final = "text/markdown"
HTML: Final = "text/html"
PDF: Final = "application/pdf"
DOCX: Final = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"

SUPPORTED_TYPES: Mapping[str, str] = MappingProxyType(
    {PLAIN: "TXT", MARKDOWN: "Markdown", HTML: "HTML", PDF: "PDF", DOCX: "DOCX"}
)

_EXTENSIONS: Final = {
    ".txt": PLAIN,
    ".text": PLAIN,
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".html": HTML,
    ".htm": HTML,
    ".pdf": PDF,
    ".docx": DOCX,
}
_DECLARED_ALIASES: Final = {"text/x-markdown": MARKDOWN}

# Magic numbers of formats that are surely not text, whatever the file is called.
_BINARY_MAGIC: Final = (
    b"MZ",
    b"\x7fELF",
    b"\x89PNG",
    b"\xff\xd8\xff",
    b"GIF8",
    b"\x1f\x8b",
    b"Rar!",
    b"7z\xbc\xaf",
    b"\xd0\xcf\x11\xe0",
    b"OggS",
    b"ID3",
    b"fLaC",
)
_TEXT_BOMS: Final = (codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


class UnsupportedType(Exception):
    """The file is of a type Haven does not ingest; the message lists the supported ones."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.supported = tuple(SUPPORTED_TYPES)
        labels = ", ".join(SUPPORTED_TYPES.values())
        super().__init__(f"unsupported file type {what}; supported types: {labels}")


def _is_binary(head: bytes) -> bool:
    if head.startswith(_TEXT_BOMS):
        return False
    return head.startswith(_BINARY_MAGIC) or b"\x00" in head


def _looks_like_html(head: bytes) -> bool:
    start = head.removeprefix(codecs.BOM_UTF8).lstrip()[:1024].lower()
    if start.startswith((b"<!doctype html", b"<html")):
        return True
    # An XML declaration or a leading comment can come before the <html> element.
    return start.startswith((b"<?xml", b"<!--")) and b"<html" in start


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        sample = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return all(char.isprintable() or char.isspace() for char in sample)


def detect_mime(filename: str | None, head: bytes, declared: str | None = None) -> str:
    """The supported MIME type of an upload, from its first bytes, name and declared type.

    Content wins over the name, and the name over the type the client declared, because
    clients often send ``application/octet-stream`` or guess from a wrong extension.
    """
    extension = Path(filename).suffix.lower() if filename else ""
    declared_type = (declared or "").split(";", 1)[0].strip().lower()
    declared_type = _DECLARED_ALIASES.get(declared_type, declared_type)
    by_name = _EXTENSIONS.get(extension)
    by_declared = declared_type if declared_type in SUPPORTED_TYPES else None

    if b"%PDF-" in head[:1024]:
        return PDF
    if head.startswith(b"PK\x03\x04"):
        # The parts' names are usually in the first local headers, but a writer may order them
        # differently; a zip that claims to be a DOCX is checked properly by the extractor.
        if b"word/" in head or DOCX in (by_name, by_declared):
            return DOCX
        raise UnsupportedType("zip archive")
    if _is_binary(head):
        raise UnsupportedType("binary file")
    if _looks_like_html(head):
        return HTML
    if by_name:
        return by_name
    if by_declared:
        return by_declared
    if (
        not extension
        and declared_type in ("", "application/octet-stream")
        and _looks_like_text(head)
    ):
        return PLAIN
    raise UnsupportedType(repr(declared_type or extension or "unknown"))
