"""Text normalisation between extraction and chunking.

Extractors hand over text as the source laid it out: PDF lines broken mid-word, Windows line
endings, ligature glyphs, no-break spaces, stray control characters. Chunking and embedding
want prose: one paragraph per blank-line-separated block, words whole, single spaces.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import replace

from workers.ingest.extract import TextBlock

# Typographic ligatures that PDF text layers often carry as single glyphs. NFKC would expand
# them too, but it also rewrites superscripts, fractions and full-width forms, which changes
# meaning; expanding just these is the safe subset.
_LIGATURES = str.maketrans(
    {
        "\ufb00": "ff",
        "\ufb01": "fi",
        "\ufb02": "fl",
        "\ufb03": "ffi",
        "\ufb04": "ffl",
        "\ufb05": "st",
        "\ufb06": "st",
    }
)

# Line-structure characters become newlines so the paragraph logic below sees them.
_LINE_BREAKS = str.maketrans(
    {
        "\r": "\n",
        "\x0b": "\n",  # vertical tab
        "\x0c": "\n\n",  # form feed: PDF tools put one between pages
        "\x85": "\n",  # NEL
        "\u2028": "\n",
        "\u2029": "\n\n",
        "\t": " ",
    }
)

# C0 and C1 control characters (the newline survives), and invisible format characters that
# only get in the way of matching words. Zero-width (non-)joiners and bidi marks stay: several
# scripts and emoji sequences need them.
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u00ad\u200b\u2060\ufeff]")
# Every space separator (Unicode category Zs) other than the plain space.
_OTHER_SPACES = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")

_HYPHENS = "-\u2010"  # ASCII hyphen-minus and U+2010 HYPHEN
# A hyphen that ends a line right after a word character, with a word continuing on the next.
_HYPHENATED_BREAK = re.compile(rf"(?<=\w)[{_HYPHENS}]\n[ ]*(?=\w)")
_PARAGRAPH_BREAK = re.compile(r"\n(?:[ ]*\n)+")
_SPACES = re.compile(r"[ ]{2,}")


def _join_hyphenated(match: re.Match[str]) -> str:
    # "inter-\nnational" is one word broken by the layout; "Jean-\nPierre" or "COVID-\n19" are
    # real hyphenated words, recognisable by the capital (or digit) that follows.
    preceding = match.string[match.start() - 1]
    following = match.string[match.end()]
    if preceding.isalpha() and following.islower():
        return ""
    return match.group(0)[0]


def normalize_text(text: str) -> str:
    """Return ``text`` as clean paragraphs separated by one blank line.

    Unicode NFC, control characters removed, words hyphenated across a line break joined,
    single line breaks inside a paragraph folded to spaces, runs of spaces collapsed, each
    paragraph trimmed.
    """
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n"))
    text = text.translate(_LINE_BREAKS).translate(_LIGATURES)
    # A soft hyphen at a line end marks a hyphenation point: the word continues on the next line.
    text = re.sub(r"\u00ad[ ]*\n[ ]*", "", text)
    text = _OTHER_SPACES.sub(" ", _CONTROL.sub("", text))
    text = "\n".join(line.strip(" ") for line in text.split("\n"))
    text = _HYPHENATED_BREAK.sub(_join_hyphenated, text)
    paragraphs = (
        _SPACES.sub(" ", paragraph.replace("\n", " ")).strip()
        for paragraph in _PARAGRAPH_BREAK.split(text)
    )
    return "\n\n".join(paragraph for paragraph in paragraphs if paragraph)


def normalize_blocks(blocks: list[TextBlock]) -> list[TextBlock]:
    """Normalise every block's text and heading; blocks left with no text are dropped."""
    normalized: list[TextBlock] = []
    for block in blocks:
        text = normalize_text(block.text)
        if not text:
            continue
        heading = normalize_text(block.heading).replace("\n\n", " ") if block.heading else ""
        normalized.append(replace(block, text=text, heading=heading or None))
    return normalized
