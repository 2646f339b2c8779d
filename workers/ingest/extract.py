"""Text extraction: an uploaded file's bytes → text blocks with page and heading.

Each supported type has one extractor that reads the file from disk (the worker downloads the
upload to a temporary file first) and returns ``TextBlock``s in reading order: one block per
section (the text under one heading) or, for PDFs, per page. Blocks carry the text as the source
has it; ``normalize`` cleans it afterwards.

Every failure a user can cause — a corrupt or encrypted file, a zip bomb, a file over a limit, a
scan with OCR switched off — raises ``ExtractionError`` whose message is shown to the user as the
job's last error, so it says what is wrong in plain words. Its ``code`` is the machine-readable
reason; a file over a limit (``ExtractTooLarge`` here; ``ExtractTimeout``, ``ExtractMemory`` from
the extractor pool, which runs this module in limited child processes) starts its message with
the code, so the job's last error names it too.
"""

from __future__ import annotations

import codecs
import re
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import charset_normalizer
import docx
import pypdf
import trafilatura
from docx.opc.exceptions import OpcError
from docx.table import Table
from docx.text.paragraph import Paragraph
from lxml import etree
from lxml import html as lxml_html
from markdown_it import MarkdownIt
from markdown_it.token import Token
from pypdf import PasswordType
from pypdf.errors import FileNotDecryptedError, LimitReachedError, PyPdfError

MiB: Final = 1024 * 1024

from haven import filetypes  # noqa: E402
from haven.filetypes import (  # noqa: E402 - one definition of the types for API and worker
    DOCX,
    HTML,
    MARKDOWN,
    PDF,
    PLAIN,
    SUPPORTED_TYPES,
    detect_mime,
)

__all__ = [
    "SUPPORTED_TYPES",
    "ExtractCrashed",
    "ExtractLimitError",
    "ExtractLimits",
    "ExtractMemory",
    "ExtractTimeout",
    "ExtractTooLarge",
    "ExtractionError",
    "TextBlock",
    "UnsupportedType",
    "detect_mime",
    "extract",
]

# Sections start at these heading levels; deeper headings stay inside their section's text so
# a document with many small sub-sub-sections does not shatter into tiny chunks.
_MAX_HEADING_LEVEL: Final = 3


@dataclass(frozen=True, slots=True)
class TextBlock:
    """A run of text from one page (1-based, PDFs only) under one section heading."""

    text: str
    page: int | None
    heading: str | None


@dataclass(frozen=True)
class ExtractLimits:
    max_bytes: int = 100 * MiB
    max_pages: int = 2000
    max_chars: int = 20_000_000
    # A DOCX is a zip archive: these stop a zip bomb before anything is decompressed.
    max_uncompressed_bytes: int = 500 * MiB
    max_compression_ratio: float = 100.0
    # Any one XML part of a DOCX: lxml builds a tree several times the size of its text.
    max_xml_part_bytes: int = 64 * MiB
    ocr: bool = False
    ocr_lang: str = "eng"
    # Wall-clock bounds per scanned page, so one pathological page cannot hold a worker forever.
    ocr_render_timeout_seconds: float = 120.0
    ocr_timeout_seconds: float = 300.0


class ExtractionError(Exception):
    """The file cannot be turned into text; the message says why, for the user.

    Permanent: the same bytes fail the same way, so a job that raises it is not retried.
    """

    code = "extract.invalid"


class UnsupportedType(ExtractionError, filetypes.UnsupportedType):
    """The file is of a type Haven does not ingest."""

    code = "extract.unsupported"


class ExtractLimitError(ExtractionError):
    """A file over one of the extraction limits; the message starts with the code."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"{self.code}: {detail}")
        self.detail = detail


class ExtractTooLarge(ExtractLimitError):
    """Over a size limit: bytes, pages, characters, or what a compressed part expands to."""

    code = "extract.too_large"


class ExtractTimeout(ExtractLimitError):
    """Extraction took longer than its wall-clock (or CPU) limit and was stopped."""

    code = "extract.timeout"


class ExtractMemory(ExtractLimitError):
    """Extraction needed more memory than its limit and was stopped."""

    code = "extract.memory"


class ExtractCrashed(ExtractLimitError):
    """The extractor process died on this file (a crash inside a native parser)."""

    code = "extract.crashed"


# --------------------------------------------------------------------------- entry point


def extract(path: Path, mime: str, limits: ExtractLimits) -> list[TextBlock]:
    """Extract the text of the file at ``path`` as blocks in reading order.

    Raises ``ExtractionError`` (with a reason for the user) when the file is corrupt, over a
    limit, or holds no text, and ``UnsupportedType`` for a type not in ``SUPPORTED_TYPES``.
    """
    extractor = _EXTRACTORS.get(mime)
    if extractor is None:
        raise UnsupportedType(repr(mime))
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise ExtractTooLarge(f"file is {_mib(size)}, over the limit of {_mib(limits.max_bytes)}")
    blocks = extractor(path, limits)
    if not any(_HAS_WORD.search(block.text) for block in blocks):
        raise ExtractionError("no text found in the file")
    return blocks


_HAS_WORD = re.compile(r"[^\W_]")


def _mib(size: int) -> str:
    return f"{size / MiB:.1f} MiB"


class _CharBudget:
    """Counts extracted characters so a huge document fails early, not after filling memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, text: str) -> str:
        self.used += len(text)
        if self.used > self.limit:
            raise ExtractTooLarge(
                f"document has more than {self.limit:,} characters of text, over the limit"
            )
        return text


# --------------------------------------------------------------------------- text encodings

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
# Browsers decode these labels as windows-1252 (WHATWG Encoding Standard); pages mislabelled
# latin-1 routinely contain curly quotes and euro signs from the 0x80-0x9F range.
_CP1252_LABELS: Final = {"latin1", "latin-1", "iso-8859-1", "iso8859-1", "us-ascii", "ascii"}


def decode_bytes(data: bytes, *, html: bool = False) -> str:
    """Decode text of unknown encoding: BOM, then UTF-8, then (HTML) the meta charset, then
    charset-normalizer's detection."""
    for bom, encoding in (
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF32_LE, "utf-32"),
        (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            return data.decode(encoding, errors="replace")
    # UTF-16 without a BOM is valid UTF-8 when it is all ASCII (NULs included); let detection
    # handle anything with NUL bytes.
    if b"\x00" not in data[:4096]:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    if html and (match := _META_CHARSET.search(data[:4096])):
        label = match.group(1).decode("ascii").lower()
        encoding = "cp1252" if label in _CP1252_LABELS else label
        try:
            return data.decode(encoding, errors="replace")
        except LookupError:
            pass  # an unknown label: fall back to detection
    matches = charset_normalizer.from_bytes(data)
    best = matches.best()
    if best is None:
        raise ExtractionError("could not detect the text encoding (is this a binary file?)")
    # Short Western European text fits cp1250 and cp1252 equally well and the detector then
    # picks the first alphabetically, turning "è" into "č". Windows-1252 is by far the more
    # common of the two, so it wins a tie.
    for candidate in matches:
        tie = (candidate.percent_chaos, candidate.percent_coherence) == (
            best.percent_chaos,
            best.percent_coherence,
        )
        if tie and "cp1252" in candidate.could_be_from_charset:
            return data.decode("cp1252", errors="replace")
    return str(best)


def _read_text(path: Path, *, html: bool = False) -> str:
    return decode_bytes(path.read_bytes(), html=html)


# --------------------------------------------------------------------------- sections


class _Sections:
    """Collects paragraphs into one block per heading."""

    def __init__(self, budget: _CharBudget) -> None:
        self.budget = budget
        self.blocks: list[TextBlock] = []
        self.heading: str | None = None
        self.paragraphs: list[str] = []

    def add(self, paragraph: str) -> None:
        if paragraph.strip():
            self.paragraphs.append(self.budget.take(paragraph))

    def start(self, heading: str) -> None:
        self.flush()
        self.heading = " ".join(heading.split()) or None

    def flush(self) -> None:
        if self.paragraphs:
            self.blocks.append(TextBlock("\n\n".join(self.paragraphs), None, self.heading))
        self.paragraphs = []


# --------------------------------------------------------------------------- plain text


def _extract_plain(path: Path, limits: ExtractLimits) -> list[TextBlock]:
    text = _CharBudget(limits.max_chars).take(_read_text(path))
    return [TextBlock(text, None, None)]


# --------------------------------------------------------------------------- markdown

# CommonMark plus GitHub's tables and strikethrough; raw HTML is recognised so comments can be
# dropped. The blocks are parsed first and each block's inline markup on its own (the core
# "inline" rule is off), so a block can keep its markup as written (see below).
_MARKDOWN: Final = (
    MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"]).disable("inline")
)
# markdown-it parses inline markup in linear time, but at several microseconds per markup
# character in Python: a block denser in markup than prose ever is (``[a[a[a…``, a megabyte of
# it) keeps its markup as written instead, so its cost stays that of plain text.
_MARKUP_CHARS: Final = "[]!*_`<&\\~"
_MAX_INLINE_MARKUP: Final = 2000


def _markdown_inline(token: Token, env: dict[str, Any]) -> str:
    """The text a reader sees of an inline token: link and image targets, emphasis markers and
    HTML comments go, the words (and an image's description) stay."""
    content = token.content
    if sum(content.count(char) for char in _MARKUP_CHARS) > _MAX_INLINE_MARKUP:
        return content
    return _inline_text(_MARKDOWN.inline.parse(content, _MARKDOWN, env, []))


def _inline_text(tokens: list[Token]) -> str:
    parts: list[str] = []
    for child in tokens:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append("\n")
        elif child.type == "image":
            parts.append(_inline_text(child.children or []))
        elif child.type == "html_inline" and not child.content.startswith("<!--"):
            parts.append(child.content)
    return "".join(parts)


def _front_matter_end(lines: list[str]) -> int:
    """The first line after YAML front matter (metadata, not content), or 0 without one."""
    if lines and lines[0].strip() == "---":
        for index in range(1, len(lines)):
            if lines[index].strip() in ("---", "..."):
                return index + 1
    return 0


def _extract_markdown(path: Path, limits: ExtractLimits) -> list[TextBlock]:
    text = _CharBudget(limits.max_chars).take(_read_text(path))
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    env: dict[str, Any] = {}  # link reference definitions, from the blocks to the inlines
    tokens = _MARKDOWN.parse("\n".join(lines[_front_matter_end(lines) :]), env)
    sections = _Sections(_CharBudget(limits.max_chars))
    row: list[str] = []  # the cells of a table row, written as one line "a | b"
    heading_level: int | None = None
    in_cell = False
    for token in tokens:
        if token.type == "heading_open":
            heading_level = int(token.tag[1])
        elif token.type == "heading_close":
            heading_level = None
        elif token.type in ("th_open", "td_open", "th_close", "td_close"):
            in_cell = token.nesting == 1
        elif token.type == "inline":
            content = _markdown_inline(token, env)
            if in_cell:
                row.append(" ".join(content.split()))
            elif heading_level is not None and heading_level <= _MAX_HEADING_LEVEL:
                sections.start(content)
            else:
                sections.add(content)
        elif token.type in ("fence", "code_block") or (
            token.type == "html_block" and not token.content.lstrip().startswith("<!--")
        ):
            sections.add(token.content.rstrip("\n"))
        elif token.type == "tr_close":
            sections.add(" | ".join(cell for cell in row if cell))
            row.clear()
    sections.flush()
    return sections.blocks


# --------------------------------------------------------------------------- HTML

_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")
# Page furniture dropped by the fallback walker (trafilatura removes it on its own).
_HTML_SKIP: Final = frozenset(
    [
        "script",
        "style",
        "noscript",
        "template",
        "head",
        "nav",
        "header",
        "footer",
        "aside",
        "form",
        "button",
        "select",
        "iframe",
        "svg",
        "canvas",
    ]
)
_HTML_BLOCKS: Final = frozenset(
    [
        "p",
        "div",
        "section",
        "article",
        "main",
        "li",
        "ul",
        "ol",
        "dl",
        "dt",
        "dd",
        "table",
        "tr",
        "blockquote",
        "pre",
        "h4",
        "h5",
        "h6",
        "figure",
        "figcaption",
        "address",
        "hr",
    ]
)
# Trafilatura's XML output (TEI-like): <head rend="h2">, <p>, <list><item>, <table><row><cell>.
_TEI_BLOCKS: Final = frozenset({"p", "head", "item", "row", "quote", "code", "list", "table"})


def _walk(
    element: etree._Element,
    sections: _Sections,
    heading_level: Callable[[etree._Element], int | None],
    blocks: frozenset[str],
    skip: frozenset[str],
) -> None:
    """Feed an element tree's text to ``sections`` in document order: headings up to level 3
    open sections, block elements end paragraphs, everything else is inline text."""
    paragraph: list[str] = []

    def end_paragraph() -> None:
        sections.add("".join(paragraph))
        paragraph.clear()

    def visit(node: etree._Element) -> None:
        tag = node.tag if isinstance(node.tag, str) else ""  # comments, PIs: only their tail
        if tag and tag not in skip:
            level = heading_level(node)
            if level is not None and level <= _MAX_HEADING_LEVEL:
                end_paragraph()
                sections.start("".join(node.itertext()))
            elif tag in ("br", "lb"):
                paragraph.append("\n")
            else:
                is_block = tag in blocks or level is not None
                if is_block:
                    end_paragraph()
                paragraph.append(node.text or "")
                for child in node:
                    visit(child)
                if is_block:
                    end_paragraph()
                elif tag in ("td", "th", "cell"):
                    paragraph.append(" | ")
        paragraph.append(node.tail or "")

    visit(element)
    end_paragraph()
    sections.flush()


def _html_heading_level(node: etree._Element) -> int | None:
    tag = node.tag
    if isinstance(tag, str) and len(tag) == 2 and tag[0] == "h" and tag[1] in "123456":
        return int(tag[1])
    return None


def _tei_heading_level(node: etree._Element) -> int | None:
    if node.tag != "head":
        return None
    rend = node.get("rend", "")
    return int(rend[1]) if re.fullmatch(r"h[1-6]", rend) else 1


def _extract_html(path: Path, limits: ExtractLimits) -> list[TextBlock]:
    markup = _XML_DECLARATION.sub("", _read_text(path, html=True), count=1)
    main = trafilatura.extract(
        markup,
        output_format="xml",
        include_comments=False,
        include_tables=True,
        include_formatting=False,
        favor_recall=True,
    )
    found = _Sections(_CharBudget(limits.max_chars))
    if main:
        tree = etree.fromstring(main, parser=etree.XMLParser(resolve_entities=False))
        body = tree.find("main")
        _walk(body if body is not None else tree, found, _tei_heading_level, _TEI_BLOCKS, _EMPTY)
        if found.budget.used >= _TRAFILATURA_MIN_TEXT:
            return found.blocks
    # On a page with little text trafilatura cannot tell content from boilerplate and returns
    # the page flattened, headings and all; the body minus obvious page furniture is then
    # the better guess.
    try:
        document = lxml_html.document_fromstring(markup)
    except (etree.ParserError, ValueError):
        return found.blocks
    walked = _Sections(_CharBudget(limits.max_chars))
    _walk(document, walked, _html_heading_level, _HTML_BLOCKS, _HTML_SKIP)
    return walked.blocks or found.blocks


# Below this much text trafilatura uses its flat "baseline" extraction (its MIN_EXTRACTED_SIZE).
_TRAFILATURA_MIN_TEXT: Final = 250
_EMPTY: Final[frozenset[str]] = frozenset()


# --------------------------------------------------------------------------- PDF


def _open_pdf(path: Path) -> pypdf.PdfReader:
    try:
        reader = pypdf.PdfReader(path)
        # Many PDFs are "encrypted" with an empty user password only to restrict printing.
        if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
            raise ExtractionError("encrypted PDF: it needs a password")
        return reader
    except FileNotDecryptedError as exc:
        raise ExtractionError("encrypted PDF: it needs a password") from exc
    except NotImplementedError as exc:  # an encryption algorithm pypdf does not support
        raise ExtractionError(f"encrypted PDF: {_reason(exc)}") from exc
    except LimitReachedError as exc:  # pypdf's own caps on what a stream or array expands to
        raise ExtractTooLarge(f"PDF: {_reason(exc)}") from exc
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ExtractionError(f"corrupt PDF: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


def _extract_pdf(path: Path, limits: ExtractLimits) -> list[TextBlock]:
    reader = _open_pdf(path)
    budget = _CharBudget(limits.max_chars)
    try:
        _check_page_count(reader, limits.max_pages)
        page_count = len(reader.pages)
    except LimitReachedError as exc:
        raise ExtractTooLarge(f"PDF: {_reason(exc)}") from exc
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ExtractionError(f"corrupt PDF: {_reason(exc)}") from exc
    blocks: list[TextBlock] = []
    pages_without_text = 0
    for number in range(1, page_count + 1):
        try:
            text = reader.pages[number - 1].extract_text()
        except FileNotDecryptedError as exc:
            raise ExtractionError("encrypted PDF: it needs a password") from exc
        except LimitReachedError as exc:
            raise ExtractTooLarge(f"PDF page {number}: {_reason(exc)}") from exc
        except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            raise ExtractionError(f"corrupt PDF: page {number}: {_reason(exc)}") from exc
        if not _HAS_WORD.search(text):
            pages_without_text += 1
            if not limits.ocr:
                continue
            text = _ocr_pdf_page(path, number, limits)
        if _HAS_WORD.search(text):
            blocks.append(TextBlock(budget.take(text), number, None))
    if not blocks and pages_without_text and not limits.ocr:
        raise ExtractionError("no text found (scanned PDF? OCR is off)")
    return blocks


def _check_page_count(reader: pypdf.PdfReader, limit: int) -> None:
    """Refuse a PDF of more than ``limit`` pages by walking its page tree, stopping at the
    limit: ``len(reader.pages)`` first builds a list of every page, and a PDF of a few KB can
    name one page object millions of times through shared branches of its tree."""
    catalog: Any = reader.trailer["/Root"].get_object()
    root: Any = catalog["/Pages"].get_object()
    leaves = 0
    # Each node with the ids of the branches above it: a branch that contains itself is a loop.
    todo: list[tuple[Any, frozenset[int]]] = [(root, frozenset())]
    visited = 0
    while todo:
        node, above = todo.pop()
        visited += 1
        kids = node.get("/Kids") if node.get("/Type") != "/Page" else None
        if kids is None:
            leaves += 1
        if leaves > limit or visited > 2 * limit + 1000:
            declared = root.get("/Count")
            count = (
                f"{declared:,}"
                if isinstance(declared, int) and declared > limit
                else (f"more than {limit:,}")
            )
            raise ExtractTooLarge(f"PDF has {count} pages, over the limit of {limit:,}")
        for kid in reversed(kids.get_object() if kids is not None else []):
            ref = getattr(kid, "idnum", None)
            if ref is not None and ref in above:
                raise ExtractionError("corrupt PDF: the page tree loops")
            todo.append((kid.get_object(), above | {ref} if ref is not None else above))


def _ocr_pdf_page(path: Path, number: int, limits: ExtractLimits) -> str:
    """Render one page with poppler's pdftoppm and read it with tesseract."""
    pdftoppm = shutil.which("pdftoppm")
    if pdftoppm is None:
        raise ExtractionError("OCR is on but pdftoppm (poppler-utils) is not installed")
    import pytesseract  # only with OCR on: its import costs every extractor process a second

    with tempfile.TemporaryDirectory(prefix="haven-ocr-") as workdir:
        prefix = Path(workdir) / "page"
        command = [pdftoppm, "-r", "300", "-gray", "-png", "-singlefile"]
        command += ["-f", str(number), "-l", str(number), str(path), str(prefix)]
        try:
            subprocess.run(  # noqa: S603 - fixed argv, no shell; the path is our own temp file
                command,
                check=True,
                capture_output=True,
                timeout=limits.ocr_render_timeout_seconds,
            )
        except subprocess.TimeoutExpired as exc:
            raise ExtractionError(f"OCR: rendering page {number} timed out") from exc
        except subprocess.CalledProcessError as exc:
            detail = exc.stderr.decode(errors="replace").strip()
            raise ExtractionError(f"OCR: could not render page {number}: {detail}") from exc
        try:
            text = pytesseract.image_to_string(
                str(prefix.with_suffix(".png")),
                lang=limits.ocr_lang,
                timeout=limits.ocr_timeout_seconds,
            )
        except pytesseract.TesseractNotFoundError as exc:
            raise ExtractionError("OCR is on but tesseract is not installed") from exc
        except pytesseract.TesseractError as exc:
            raise ExtractionError(f"OCR failed on page {number}: {exc.message}") from exc
        except RuntimeError as exc:  # pytesseract's timeout
            raise ExtractionError(f"OCR: reading page {number} timed out") from exc
    return str(text)


# --------------------------------------------------------------------------- DOCX


def _check_zip(path: Path, limits: ExtractLimits) -> None:
    """Refuse a zip bomb from the central directory alone, before decompressing anything.

    The declared sizes can be trusted as an upper bound: zipfile stops reading a member at its
    declared size and fails the CRC check if the data does not match.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            names = {member.filename for member in members}
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ExtractionError(f"corrupt DOCX: not a valid zip archive ({_reason(exc)})") from exc
    if "word/document.xml" not in names:
        raise ExtractionError("corrupt DOCX: the archive has no word/document.xml")
    total = sum(member.file_size for member in members)
    packed = sum(member.compress_size for member in members)
    if total > limits.max_uncompressed_bytes:
        raise ExtractTooLarge(
            f"DOCX would expand to {_mib(total)}, over the limit of "
            f"{_mib(limits.max_uncompressed_bytes)} (zip bomb?)"
        )
    large = [member for member in members if member.file_size > limits.max_xml_part_bytes]
    is_xml = _xml_parts(path, limits) if large else None
    for member in large:
        if is_xml is not None and is_xml(member.filename):
            raise ExtractTooLarge(
                f"DOCX part {member.filename} would expand to {_mib(member.file_size)}, over "
                f"the limit of {_mib(limits.max_xml_part_bytes)} for one XML part"
            )
    # Per member too, but only for large ones: small XML parts legitimately compress very well.
    ratios = [total / max(packed, 1)] + [
        member.file_size / max(member.compress_size, 1)
        for member in members
        if member.file_size > MiB
    ]
    if max(ratios) > limits.max_compression_ratio:
        raise ExtractTooLarge(
            f"DOCX compression ratio {max(ratios):,.0f}:1 is over the limit of "
            f"{limits.max_compression_ratio:,.0f}:1 (zip bomb?)"
        )


_CONTENT_TYPES_NS: Final = "{http://schemas.openxmlformats.org/package/2006/content-types}"


def _xml_parts(path: Path, limits: ExtractLimits) -> Callable[[str], bool]:
    """Which members python-docx will parse as XML, by their content type in
    ``[Content_Types].xml`` (a part's name proves nothing: an XML part may be called
    ``image1.png``). A member with no content type counts as XML."""
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("[Content_Types].xml")
            if info.file_size > limits.max_xml_part_bytes:
                raise ExtractTooLarge(
                    f"DOCX part [Content_Types].xml would expand to {_mib(info.file_size)}, "
                    f"over the limit of {_mib(limits.max_xml_part_bytes)} for one XML part"
                )
            root = etree.fromstring(
                archive.read(info), parser=etree.XMLParser(resolve_entities=False)
            )
    except KeyError as exc:
        raise ExtractionError("corrupt DOCX: the archive has no [Content_Types].xml") from exc
    except (zipfile.BadZipFile, etree.LxmlError, ValueError, OSError) as exc:
        raise ExtractionError(f"corrupt DOCX: {_reason(exc)}") from exc
    defaults = {
        (item.get("Extension") or "").lower(): item.get("ContentType") or ""
        for item in root.iter(f"{_CONTENT_TYPES_NS}Default")
    }
    overrides = {
        (item.get("PartName") or "").lstrip("/").lower(): item.get("ContentType") or ""
        for item in root.iter(f"{_CONTENT_TYPES_NS}Override")
    }

    def is_xml(name: str) -> bool:
        lowered = name.lower()
        content_type = overrides.get(lowered) or defaults.get(lowered.rpartition(".")[2], "")
        return not content_type or content_type.endswith("xml")

    return is_xml


_DOCX_HEADING = re.compile(r"heading ([1-9])", re.I)


def _docx_heading_level(paragraph: Paragraph) -> int | None:
    style = paragraph.style
    name = (style.name or "") if style is not None else ""
    if name.lower() == "title":
        return 1
    match = _DOCX_HEADING.fullmatch(name)
    return int(match.group(1)) if match else None


def _docx_table_rows(table: Table) -> Iterator[str]:
    for row in table.rows:
        cells: list[str] = []
        for cell in row.cells:
            text = " ".join(cell.text.split())
            # A merged cell is returned once per grid column it spans.
            if text and (not cells or cells[-1] != text):
                cells.append(text)
        yield " | ".join(cells)


def _extract_docx(path: Path, limits: ExtractLimits) -> list[TextBlock]:
    _check_zip(path, limits)
    sections = _Sections(_CharBudget(limits.max_chars))
    try:
        document = docx.Document(str(path))
        for item in document.iter_inner_content():
            if isinstance(item, Paragraph):
                level = _docx_heading_level(item)
                if level is not None and level <= _MAX_HEADING_LEVEL:
                    sections.start(item.text)
                else:
                    sections.add(item.text)
            else:
                for row in _docx_table_rows(item):
                    sections.add(row)
    except ExtractionError:
        raise
    except (OpcError, zipfile.BadZipFile, etree.LxmlError, KeyError, ValueError) as exc:
        raise ExtractionError(f"corrupt DOCX: {_reason(exc)}") from exc
    sections.flush()
    return sections.blocks


_EXTRACTORS: Final[Mapping[str, Callable[[Path, ExtractLimits], list[TextBlock]]]] = {
    PLAIN: _extract_plain,
    MARKDOWN: _extract_markdown,
    HTML: _extract_html,
    PDF: _extract_pdf,
    DOCX: _extract_docx,
}
