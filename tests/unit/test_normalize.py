"""Normalisation: what a reader of a chunk (or a search for a word) would notice."""

from __future__ import annotations

import pytest

from workers.ingest.extract import TextBlock
from workers.ingest.normalize import normalize_blocks, normalize_text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("the inter-\nnational station", "the international station"),
        ("the inter-  \n   national station", "the international station"),
        ("a hyphen\u2010\nated word", "a hyphenated word"),
        ("soft\u00ad\nhyphen", "softhyphen"),
        # A capital or a digit after the break means a real compound: keep the hyphen.
        ("Jean-\nPierre Rampal", "Jean-Pierre Rampal"),
        ("the COVID-\n19 pandemic", "the COVID-19 pandemic"),
        # A dash after a space is punctuation, not hyphenation.
        ("before -\nafter", "before - after"),
    ],
)
def test_words_hyphenated_across_lines_are_joined(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


def test_lines_fold_into_paragraphs_and_paragraphs_stay_apart() -> None:
    raw = "  First line\nsecond line.\r\n\r\n \n\nNext   paragraph\there.  \n"
    assert normalize_text(raw) == "First line second line.\n\nNext paragraph here."


def test_form_feed_between_pdf_pages_is_a_paragraph_break() -> None:
    assert normalize_text("end of page one\x0cstart of page two") == (
        "end of page one\n\nstart of page two"
    )


def test_unicode_is_composed_and_ligatures_expanded() -> None:
    decomposed = "Cafe\u0301 \ufb01nancial \ufb02ow"
    assert normalize_text(decomposed) == "Café financial flow"


def test_control_and_invisible_characters_are_removed() -> None:
    raw = "null\x00byte\x07 zero\u200bwidth \ufeffbom no\u00a0break\u2009thin"
    assert normalize_text(raw) == "nullbyte zerowidth bom no break thin"


def test_joiners_that_scripts_and_emoji_need_are_kept() -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    persian = "می\u200cخواهم"  # noqa: RUF001
    assert normalize_text(f"{family} {persian}") == f"{family} {persian}"


def test_whitespace_only_text_normalises_to_nothing() -> None:
    assert normalize_text(" \n\t\r\n \u00a0 \x0c ") == ""


def test_normalize_blocks_keeps_page_and_heading_and_drops_empty_blocks() -> None:
    blocks = [
        TextBlock("  \n ", 1, "Intro"),
        TextBlock("Some\ntext", 2, "  Results\nand  discussion "),
        TextBlock("More", None, " \n "),
    ]
    assert normalize_blocks(blocks) == [
        TextBlock("Some text", 2, "Results and discussion"),
        TextBlock("More", None, None),
    ]
