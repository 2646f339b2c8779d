"""Extraction from real files made by the tests: PDFs written by fpdf2 (and Pillow for scans),
Word files by python-docx, text in several encodings."""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import docx
import pytest
from fpdf import FPDF
from PIL import Image, ImageDraw, ImageFont

from haven.filetypes import UnsupportedType as UnsupportedFileType
from tests.fixtures.hostile_files import (
    docx_with_large_part,
    expanding_pdf,
    many_pages_pdf,
    redos_markdown,
)
from workers.ingest.extract import (
    DOCX,
    HTML,
    MARKDOWN,
    PDF,
    PLAIN,
    SUPPORTED_TYPES,
    ExtractionError,
    ExtractLimits,
    ExtractTooLarge,
    TextBlock,
    UnsupportedType,
    detect_mime,
    extract,
)
from workers.ingest.normalize import normalize_blocks

LIMITS = ExtractLimits()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def extract_normalized(path: Path, mime: str, limits: ExtractLimits = LIMITS) -> list[TextBlock]:
    return normalize_blocks(extract(path, mime, limits))


def make_pdf(tmp_path: Path, pages: list[str], name: str = "doc.pdf", **encryption: str) -> Path:
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    if encryption:
        pdf.set_encryption(**encryption)
    path = tmp_path / name
    pdf.output(str(path))
    return path


def make_docx(tmp_path: Path, name: str = "doc.docx") -> Path:
    document = docx.Document()
    document.add_paragraph("Quarterly report", style="Title")
    document.add_paragraph("Prepared by the finance team.")
    document.add_heading("Revenue", level=1)
    document.add_paragraph("Revenue grew by twelve percent.")
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text = "Region"
    table.cell(0, 1).text = "Growth"
    table.cell(1, 0).text = "North"
    table.cell(1, 1).text = "15%"
    document.add_heading("Costs", level=2)
    document.add_paragraph("Costs stayed flat.")
    document.add_heading("Travel", level=4)  # too deep to start a section of its own
    document.add_paragraph("Travel costs fell.")
    path = tmp_path / name
    document.save(str(path))
    return path


# --------------------------------------------------------------------------- detect_mime


def test_supported_types_are_the_five_the_spec_promises() -> None:
    assert set(SUPPORTED_TYPES) == {PLAIN, MARKDOWN, HTML, PDF, DOCX}


def test_content_wins_over_a_wrong_name_and_declared_type(tmp_path: Path) -> None:
    pdf_head = make_pdf(tmp_path, ["x"]).read_bytes()[:2048]
    assert detect_mime("notes.txt", pdf_head, "text/plain") == PDF
    docx_head = make_docx(tmp_path).read_bytes()[:4096]
    assert detect_mime("upload.bin", docx_head, "application/octet-stream") == DOCX
    assert detect_mime("page.txt", b"\xef\xbb\xbf  <!DOCTYPE html><html>") == HTML


def test_name_then_declared_type_decide_for_plain_text() -> None:
    assert detect_mime("README.md", b"# Title\n") == MARKDOWN
    assert detect_mime("notes.TXT", b"hello") == PLAIN
    assert detect_mime("page.htm", b"<p>hi</p>") == HTML
    assert detect_mime(None, b"# Title", "text/markdown; charset=utf-8") == MARKDOWN
    assert detect_mime("blob", b"hello", "text/plain") == PLAIN
    assert detect_mime(None, b"just some text\n", "application/octet-stream") == PLAIN


def test_a_docx_is_recognised_by_name_when_its_parts_come_late(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("[Content_Types].xml", "x" * 10_000)
        archive.writestr("word/document.xml", "<w:document/>")
    head = buffer.getvalue()[:512]
    assert detect_mime("report.docx", head) == DOCX
    with pytest.raises(UnsupportedFileType, match="zip archive"):
        detect_mime("archive.zip", head)


@pytest.mark.parametrize(
    ("filename", "head", "declared"),
    [
        ("photo.png", b"\x89PNG\r\n\x1a\n\x00\x00", "image/png"),
        ("data.xlsx", b"\x00\x01binary", None),
        (None, b"\x00\x01\x02binary", "application/octet-stream"),
    ],
)
def test_unsupported_types_are_refused_with_the_supported_list(
    filename: str | None, head: bytes, declared: str | None
) -> None:
    with pytest.raises(UnsupportedFileType) as caught:
        detect_mime(filename, head, declared)
    message = str(caught.value)
    for label in ("TXT", "Markdown", "HTML", "PDF", "DOCX"):
        assert label in message
    assert caught.value.supported == tuple(SUPPORTED_TYPES)


def test_extract_refuses_an_unsupported_type(tmp_path: Path) -> None:
    path = write(tmp_path, "a.png", b"\x89PNG")
    with pytest.raises(UnsupportedType, match="'image/png'"):
        extract(path, "image/png", LIMITS)


# --------------------------------------------------------------------------- plain text

FRENCH = "Crème brûlée à la façon de grand-mère. Le garçon a reçu un cadeau très élégant."


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        (FRENCH, "utf-8"),
        (FRENCH, "utf-8-sig"),
        (FRENCH, "latin-1"),
        (FRENCH + " “Ça coûte 5 €”, dit-il — d’accord.", "cp1252"),  # noqa: RUF001
        (FRENCH + " Привет, мир.", "utf-16"),
    ],
)
def test_text_files_are_decoded_whatever_their_encoding(
    tmp_path: Path, text: str, encoding: str
) -> None:
    path = write(tmp_path, "notes.txt", text.encode(encoding))
    assert extract_normalized(path, PLAIN) == [TextBlock(text, None, None)]


@pytest.mark.parametrize("content", [b"", b"  \n\t\r\n  ", b"\x00\x00", b"--- ... ---"])
def test_a_file_without_text_says_so(tmp_path: Path, content: bytes) -> None:
    path = write(tmp_path, "empty.txt", content)
    with pytest.raises(ExtractionError, match="no text found"):
        extract(path, PLAIN, LIMITS)


def test_a_file_over_the_size_limit_is_refused_before_reading(tmp_path: Path) -> None:
    path = write(tmp_path, "big.txt", b"word " * 1000)
    with pytest.raises(ExtractionError, match=r"file is 0\.0 MiB, over the limit"):
        extract(path, PLAIN, ExtractLimits(max_bytes=4000))


def test_text_over_the_character_limit_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "long.txt", b"word " * 1000)
    with pytest.raises(ExtractionError, match="more than 1,000 characters"):
        extract(path, PLAIN, ExtractLimits(max_chars=1000))


# --------------------------------------------------------------------------- markdown

MARKDOWN_DOC = """\
---
title: front matter is metadata
---
Preface before any heading.

# Install

Run the [installer](https://example.com/install) with **admin** rights.
See ![the diagram](img/setup.png) for details.

```bash
# not a heading: a comment in a code block
make install
```

Setup guide
===========

Text under a setext heading.

## Configure ##

#### Deep detail

Stays in the Configure section.
"""


def test_markdown_sections_carry_their_heading(tmp_path: Path) -> None:
    path = write(tmp_path, "guide.md", MARKDOWN_DOC.encode())
    blocks = extract_normalized(path, MARKDOWN)
    assert [(block.heading, block.text) for block in blocks] == [
        (None, "Preface before any heading."),
        (
            "Install",
            "Run the installer with admin rights. See the diagram for details.\n\n"
            "# not a heading: a comment in a code block make install",
        ),
        ("Setup guide", "Text under a setext heading."),
        ("Configure", "Deep detail\n\nStays in the Configure section."),
    ]


def test_markdown_lists_tables_and_markup_read_as_plain_text(tmp_path: Path) -> None:
    document = """\
# Shopping

- **Milk**, two litres
- Bread <!-- the brown one -->
- See [the list][shop] and `code`

| Item | Price |
|------|------:|
| Milk | 1.20 |
| ~~Tea~~ Coffee | 3.50 |

> Quoted *wisdom*\\
> on two lines.

<!--
a comment
over lines
-->

[shop]: https://example.com/shop "not text"
"""
    path = write(tmp_path, "list.md", document.encode())
    [block] = extract_normalized(path, MARKDOWN)
    assert block.heading == "Shopping"
    assert block.text.split("\n\n") == [
        "Milk, two litres",
        "Bread",
        "See the list and code",
        "Item | Price",
        "Milk | 1.20",
        "Tea Coffee | 3.50",
        "Quoted wisdom on two lines.",
    ]


@pytest.mark.parametrize("size", [30_000, 1_000_000])
@pytest.mark.timeout(60)  # a backtracking regex took hours on the 1 MB line
def test_a_markdown_line_of_open_brackets_extracts_as_its_text(tmp_path: Path, size: int) -> None:
    path = write(tmp_path, "brackets.md", redos_markdown(size))
    [block] = extract(path, MARKDOWN, LIMITS)
    assert block.heading == "Brackets"
    assert block.text == "[a" * (size // 2)


# --------------------------------------------------------------------------- HTML

ARTICLE_HTML = """\
<!DOCTYPE html>
<html><head><title>Blog</title><style>body { color: red }</style></head>
<body>
<nav><a href="/">Home</a> | <a href="/about">About us</a> | <a href="/shop">Shop</a></nav>
<article>
  <h1>Solar power in cities</h1>
  <p>Rooftop panels now supply a fifth of the electricity used by the inter-<br>national
     districts of several large cities, according to a survey published this spring.</p>
  <h2>Costs</h2>
  <p>Installation costs have fallen by more than half over the past decade, which has made
     small installations worthwhile for ordinary households as well as businesses.</p>
  <ul><li>Panels are cheaper.</li><li>Inverters last longer.</li></ul>
  <h3>Subsidies</h3>
  <p>Several cities still subsidise the first installation on a building.</p>
</article>
<footer>Copyright 2024 Example Media. All rights reserved. Privacy policy. Cookie settings.</footer>
<script>trackVisitor("should never be indexed");</script>
</body></html>
"""


def test_html_keeps_the_article_and_its_headings_and_drops_page_furniture(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "post.html", ARTICLE_HTML.encode())
    blocks = extract_normalized(path, HTML)
    headings = [block.heading for block in blocks]
    assert headings == ["Solar power in cities", "Costs", "Subsidies"]
    text = "\n".join(block.text for block in blocks)
    assert "international districts" in blocks[0].text
    assert "Panels are cheaper.\n\nInverters last longer." in blocks[1].text
    for boilerplate in ("About us", "Copyright", "trackVisitor", "color: red"):
        assert boilerplate not in text


def test_a_short_html_page_still_gives_its_text(tmp_path: Path) -> None:
    html = (
        "<html><body><nav>Menu</nav><h2>Note</h2><div>Buy <b>milk</b>.<br>Call Anna.</div>"
        "<script>x()</script></body></html>"
    )
    path = write(tmp_path, "note.html", html.encode())
    blocks = extract_normalized(path, HTML)
    assert [(block.heading, block.text) for block in blocks] == [("Note", "Buy milk. Call Anna.")]


def test_html_in_a_legacy_encoding_is_decoded_by_its_meta_charset(tmp_path: Path) -> None:
    html = (
        '<html><head><meta charset="iso-8859-1"></head><body>'
        "<p>“Déjà vu” costs 5 € — naïve café.</p></body></html>"
    )
    path = write(tmp_path, "legacy.html", html.encode("cp1252"))
    [block] = extract_normalized(path, HTML)
    assert block.text == "“Déjà vu” costs 5 € — naïve café."


# --------------------------------------------------------------------------- PDF


def test_pdf_text_keeps_its_page_numbers(tmp_path: Path) -> None:
    path = make_pdf(
        tmp_path,
        [
            "The committee met in Geneva.\nIt discussed the inter-\nnational treaty.",
            "Page two has nothing but this line.",
            "",  # a blank page in the middle
            "The last page closes the report.",
        ],
    )
    blocks = extract_normalized(path, PDF)
    assert blocks == [
        TextBlock("The committee met in Geneva. It discussed the international treaty.", 1, None),
        TextBlock("Page two has nothing but this line.", 2, None),
        TextBlock("The last page closes the report.", 4, None),
    ]


def test_a_pdf_over_the_page_limit_is_refused(tmp_path: Path) -> None:
    path = make_pdf(tmp_path, ["one", "two", "three"])
    with pytest.raises(ExtractionError, match="PDF has 3 pages, over the limit of 2"):
        extract(path, PDF, ExtractLimits(max_pages=2))


@pytest.mark.timeout(60)  # pypdf alone lists every one of the million pages first
def test_a_pdf_whose_page_tree_names_one_page_a_million_times_is_refused(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "pages.pdf", many_pages_pdf(1_000_000))
    assert path.stat().st_size < 10_000
    with pytest.raises(ExtractTooLarge) as caught:
        extract(path, PDF, ExtractLimits(max_pages=50))
    assert caught.value.code == "extract.too_large"
    assert str(caught.value) == ("extract.too_large: PDF has 1,000,000 pages, over the limit of 50")


def test_a_pdf_stream_past_what_pypdf_decompresses_is_too_large(tmp_path: Path) -> None:
    path = write(tmp_path, "expanding.pdf", expanding_pdf(expanded_mib=100))
    assert path.stat().st_size < 200_000
    with pytest.raises(ExtractTooLarge, match=r"^extract\.too_large: PDF page 1: "):
        extract(path, PDF, LIMITS)


def test_a_pdf_of_shared_pages_under_the_limit_is_read_page_by_page(tmp_path: Path) -> None:
    path = write(tmp_path, "pages.pdf", many_pages_pdf(10))
    blocks = extract_normalized(path, PDF)
    assert blocks == [TextBlock("Hello from a page", page, None) for page in range(1, 11)]


def test_a_pdf_page_tree_that_loops_is_corrupt(tmp_path: Path) -> None:
    from tests.fixtures.hostile_files import pdf_bytes

    looping = pdf_bytes(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Pages /Kids [2 0 R] /Count 1 >>",
        ]
    )
    path = write(tmp_path, "loop.pdf", looping)
    with pytest.raises(ExtractionError, match="corrupt PDF: "):
        extract(path, PDF, LIMITS)


def test_pdf_text_over_the_character_limit_is_refused(tmp_path: Path) -> None:
    path = make_pdf(tmp_path, ["a" * 80, "b" * 80])
    with pytest.raises(ExtractionError, match="more than 100 characters"):
        extract(path, PDF, ExtractLimits(max_chars=100))


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 3],  # truncated upload
        lambda data: b"%PDF-1.7\n" + b"\x00garbage" * 200,  # a header and nothing usable
        lambda data: b"",  # empty
    ],
)
def test_a_corrupt_pdf_fails_with_a_readable_reason(tmp_path: Path, damage) -> None:
    good = make_pdf(tmp_path, ["Some text on a page."] * 3).read_bytes()
    path = write(tmp_path, "broken.pdf", damage(good))
    with pytest.raises(ExtractionError) as caught:
        extract(path, PDF, LIMITS)
    message = str(caught.value)
    assert message.startswith(("corrupt PDF: ", "no text found"))
    assert "Traceback" not in message


def test_a_password_protected_pdf_says_it_needs_a_password(tmp_path: Path) -> None:
    path = make_pdf(tmp_path, ["Secret plans."], owner_password="owner", user_password="pw")
    with pytest.raises(ExtractionError, match="encrypted PDF: it needs a password"):
        extract(path, PDF, LIMITS)


def test_a_pdf_encrypted_only_against_printing_is_read(tmp_path: Path) -> None:
    path = make_pdf(tmp_path, ["Open to read."], owner_password="owner")
    assert extract_normalized(path, PDF) == [TextBlock("Open to read.", 1, None)]


def make_scanned_pdf(tmp_path: Path, lines: list[str]) -> Path:
    """An image-only PDF, as a scanner makes: the text is pixels, there is no text layer."""
    font = ImageFont.load_default(size=48)
    image = Image.new("L", (1700, 120 + 90 * len(lines)), color=255)
    draw = ImageDraw.Draw(image)
    for index, line in enumerate(lines):
        draw.text((80, 60 + 90 * index), line, fill=0, font=font)
    path = tmp_path / "scan.pdf"
    image.save(path, "PDF", resolution=150)
    return path


def test_a_scanned_pdf_with_ocr_off_says_why_there_is_no_text(tmp_path: Path) -> None:
    path = make_scanned_pdf(tmp_path, ["Invoice number 4711"])
    with pytest.raises(ExtractionError, match=r"no text found \(scanned PDF\? OCR is off\)"):
        extract(path, PDF, ExtractLimits(ocr=False))


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract-ocr is not installed")
def test_a_scanned_pdf_is_read_by_ocr_when_it_is_on(tmp_path: Path) -> None:
    path = make_scanned_pdf(tmp_path, ["Invoice number 4711", "Payment due in March"])
    blocks = extract_normalized(path, PDF, ExtractLimits(ocr=True))
    assert len(blocks) == 1
    assert blocks[0].page == 1
    assert "Invoice number 4711" in blocks[0].text
    assert "Payment due in March" in blocks[0].text


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract-ocr is not installed")
def test_ocr_with_a_missing_language_pack_fails_readably(tmp_path: Path) -> None:
    path = make_scanned_pdf(tmp_path, ["Hello"])
    with pytest.raises(ExtractionError, match="OCR failed on page 1"):
        extract(path, PDF, ExtractLimits(ocr=True, ocr_lang="xxx"))


# --------------------------------------------------------------------------- DOCX


def test_docx_sections_carry_their_heading_and_tables_keep_their_rows(tmp_path: Path) -> None:
    blocks = extract_normalized(make_docx(tmp_path), DOCX)
    assert blocks == [
        TextBlock("Prepared by the finance team.", None, "Quarterly report"),
        TextBlock(
            "Revenue grew by twelve percent.\n\nRegion | Growth\n\nNorth | 15%", None, "Revenue"
        ),
        TextBlock("Costs stayed flat.\n\nTravel\n\nTravel costs fell.", None, "Costs"),
    ]


def test_an_empty_docx_has_no_text(tmp_path: Path) -> None:
    path = tmp_path / "empty.docx"
    docx.Document().save(str(path))
    with pytest.raises(ExtractionError, match="no text found"):
        extract(path, DOCX, LIMITS)


def test_a_corrupt_docx_fails_with_a_readable_reason(tmp_path: Path) -> None:
    good = make_docx(tmp_path).read_bytes()
    truncated = write(tmp_path, "truncated.docx", good[: len(good) // 2])
    with pytest.raises(ExtractionError, match="corrupt DOCX: not a valid zip archive"):
        extract(truncated, DOCX, LIMITS)

    not_word = tmp_path / "other.docx"
    with zipfile.ZipFile(not_word, "w") as archive:
        archive.writestr("hello.txt", "hello")
    with pytest.raises(ExtractionError, match="corrupt DOCX: the archive has no word/document"):
        extract(not_word, DOCX, LIMITS)

    bad_xml = tmp_path / "badxml.docx"
    with zipfile.ZipFile(make_docx(tmp_path)) as source, zipfile.ZipFile(bad_xml, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "word/document.xml":
                data = data[: len(data) // 2]
            target.writestr(item, data)
    with pytest.raises(ExtractionError, match="corrupt DOCX: "):
        extract(bad_xml, DOCX, LIMITS)


def zip_bomb(tmp_path: Path, size: int) -> Path:
    """A valid-looking DOCX whose document part is ``size`` bytes of zeros."""
    path = tmp_path / "bomb.docx"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        with archive.open("word/document.xml", "w", force_zip64=True) as member:
            block = b"\x00" * (1024 * 1024)
            for _ in range(size // len(block)):
                member.write(block)
    return path


def test_a_zip_bomb_disguised_as_docx_is_stopped_by_its_compression_ratio(
    tmp_path: Path,
) -> None:
    path = zip_bomb(tmp_path, 16 * 1024 * 1024)
    assert path.stat().st_size < 100_000
    with pytest.raises(ExtractionError, match=r"compression ratio [\d,]+:1 .* \(zip bomb\?\)"):
        extract(path, DOCX, LIMITS)


def test_a_zip_bomb_disguised_as_docx_is_stopped_by_its_expanded_size(tmp_path: Path) -> None:
    path = zip_bomb(tmp_path, 16 * 1024 * 1024)
    limits = ExtractLimits(max_uncompressed_bytes=8 * 1024 * 1024, max_compression_ratio=1e9)
    with pytest.raises(ExtractionError, match=r"expand to 16\.0 MiB, over the limit of 8\.0 MiB"):
        extract(path, DOCX, limits)


def test_a_docx_with_a_300_mib_xml_part_is_refused_from_its_directory(tmp_path: Path) -> None:
    path = docx_with_large_part(tmp_path / "big.docx", 300)
    assert path.stat().st_size < 2 * 1024 * 1024
    # A ratio limit this loose would let it through: the size of the part stops it.
    limits = ExtractLimits(max_compression_ratio=1e9)
    with pytest.raises(ExtractTooLarge) as caught:
        extract(path, DOCX, limits)
    assert caught.value.code == "extract.too_large"
    assert str(caught.value) == (
        "extract.too_large: DOCX part word/document.xml would expand to 300.0 MiB, "
        "over the limit of 64.0 MiB for one XML part"
    )


def test_an_xml_part_named_like_an_image_is_held_to_the_xml_limit(tmp_path: Path) -> None:
    source = make_docx(tmp_path)
    disguised = tmp_path / "disguised.docx"
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(disguised, "w") as target:
        for item in original.infolist():
            data = original.read(item.filename)
            if item.filename == "[Content_Types].xml":
                data = data.replace(
                    b"</Types>",
                    b'<Default Extension="png" ContentType="image/png"/>'
                    b'<Override PartName="/word/media/image1.png" '
                    b'ContentType="application/xml"/></Types>',
                )
            target.writestr(item, data)
        target.writestr("word/media/photo.png", b"\x89PNG" + b"\x00" * 2 * 1024 * 1024)
    limits = ExtractLimits(max_xml_part_bytes=1024 * 1024, max_compression_ratio=1e9)
    assert extract_normalized(disguised, DOCX, limits)  # a large image is not held to it

    with zipfile.ZipFile(disguised, "a") as target:
        target.writestr("word/media/image1.png", b"<x>" + b" " * 2 * 1024 * 1024 + b"</x>")
    with pytest.raises(ExtractTooLarge, match=r"part word/media/image1\.png would expand"):
        extract(disguised, DOCX, limits)


def test_every_limit_error_names_its_code_and_fails_for_good() -> None:
    error = ExtractTooLarge("PDF has 3 pages, over the limit of 2")
    assert isinstance(error, ExtractionError)  # the worker does not retry these
    assert error.code == "extract.too_large"
    assert str(error) == "extract.too_large: PDF has 3 pages, over the limit of 2"
    assert ExtractionError("corrupt PDF: x").code == "extract.invalid"
