"""Multipart forms read as they stream in, with a limit per part.

Starlette's form parser spools every file part whole before the route sees it; a route that
must refuse an oversized part without holding it (the review archives) reads the body here
instead. Each file part goes to a file in the caller's folder while it is hashed and counted;
the moment a part passes its limit the read stops and ``TooLarge`` names the part and the limit,
so no more than the limit (plus one network read) is ever kept, in memory or on disk. Text
fields are kept in memory under a small limit of their own; unknown parts are refused.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from haven.errors import BadRequest, TooLarge

MAX_PARTS = 32
MAX_HEADER_BYTES = 8192


@dataclass(frozen=True)
class FilePart:
    name: str
    filename: str
    path: Path
    size: int
    sha256: str


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, FilePart] = field(default_factory=dict)


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    name: str = ""
    filename: str | None = None
    limit: int = 0
    size: int = 0
    buffer: bytearray = field(default_factory=bytearray)
    sink: IO[bytes] | None = None
    digest: hashlib._Hash | None = None
    path: Path | None = None


class _FormReader:
    def __init__(
        self, folder: Path, file_limits: dict[str, int], text_fields: set[str], text_limit: int
    ) -> None:
        self.folder = folder
        self.file_limits = file_limits
        self.text_fields = text_fields
        self.text_limit = text_limit
        self.form = Form()
        self.part: _Part | None = None
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.parts = 0
        self.error: Exception | None = None

    # --- parser callbacks: errors are kept and raised after ``write`` returns ---
    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise BadRequest(f"more than {MAX_PARTS} form parts", code="form.too_many_parts")
        self.part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        assert self.part is not None
        name = bytes(self.header_field).decode("latin-1").strip().lower()
        self.part.headers[name] = bytes(self.header_value).decode("latin-1").strip()
        self.header_field.clear()
        self.header_value.clear()

    def on_headers_finished(self) -> None:
        part = self.part
        assert part is not None
        disposition, options = parse_options_header(part.headers.get("content-disposition", ""))
        if disposition != b"form-data" or b"name" not in options:
            raise BadRequest("a form part has no name", code="form.malformed")
        part.name = options[b"name"].decode("utf-8", "replace")
        if "\x00" in part.name:
            raise BadRequest("a form part's name contains NUL", code="form.malformed")
        if part.name in self.form.fields or part.name in self.form.files:
            raise BadRequest(f"the part {part.name!r} is sent twice", code="form.duplicate")
        raw_filename = options.get(b"filename")
        if part.name in self.file_limits:
            if raw_filename is None:
                raise BadRequest(f"{part.name} must be a file", code="form.not_a_file")
            part.filename = raw_filename.decode("utf-8", "replace").replace("\x00", "")
            part.limit = self.file_limits[part.name]
            fd, name = _temp(self.folder, part.name)
            part.path = Path(name)
            part.sink = os.fdopen(fd, "wb")
            part.digest = hashlib.sha256()
        elif part.name in self.text_fields:
            part.limit = self.text_limit
        else:
            raise BadRequest(f"unknown form part {part.name!r}", code="form.unknown_part")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.part
        assert part is not None
        chunk = data[start:end]
        part.size += len(chunk)
        if part.size > part.limit:
            raise TooLarge(
                f"{part.name} is over the limit of {part.limit} bytes",
                limit=part.limit,
                code="review.part_too_large" if part.sink else "form.field_too_large",
            )
        if part.sink is not None and part.digest is not None:
            part.sink.write(chunk)
            part.digest.update(chunk)
        else:
            part.buffer += chunk

    def on_part_end(self) -> None:
        part = self.part
        assert part is not None
        if part.sink is not None and part.digest is not None and part.path is not None:
            part.sink.close()
            self.form.files[part.name] = FilePart(
                part.name, part.filename or "", part.path, part.size, part.digest.hexdigest()
            )
        else:
            try:
                text = bytes(part.buffer).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BadRequest(f"{part.name} is not UTF-8 text", code="form.encoding") from exc
            self.form.fields[part.name] = text
        self.part = None

    def close(self) -> None:
        if self.part is not None and self.part.sink is not None:
            self.part.sink.close()


def _temp(folder: Path, name: str) -> tuple[int, str]:
    return tempfile.mkstemp(prefix=f"{name}-", dir=folder)


async def read_form(
    chunks: AsyncIterator[bytes],
    content_type: str | None,
    folder: Path,
    *,
    file_limits: dict[str, int],
    text_fields: set[str],
    text_limit: int,
) -> Form:
    """Read a ``multipart/form-data`` body into ``folder`` (files) and memory (text fields)."""
    mime, options = parse_options_header(content_type or "")
    if mime != b"multipart/form-data" or not options.get(b"boundary"):
        raise BadRequest(
            "the body must be multipart/form-data with a boundary", code="form.content_type"
        )
    reader = _FormReader(folder, file_limits, text_fields, text_limit)
    callbacks = {
        "on_part_begin": reader.on_part_begin,
        "on_part_data": reader.on_part_data,
        "on_part_end": reader.on_part_end,
        "on_header_field": reader.on_header_field,
        "on_header_value": reader.on_header_value,
        "on_header_end": reader.on_header_end,
        "on_headers_finished": reader.on_headers_finished,
    }
    try:
        parser = MultipartParser(
            options[b"boundary"],
            callbacks,  # type: ignore[arg-type]
            max_header_size=MAX_HEADER_BYTES,
        )
        async for chunk in chunks:
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise BadRequest("the multipart body is malformed", code="form.malformed") from exc
    except ValueError as exc:
        raise BadRequest("the multipart body is malformed", code="form.malformed") from exc
    finally:
        reader.close()
    if reader.part is not None:
        raise BadRequest("the multipart body ends inside a part", code="form.malformed")
    return reader.form
