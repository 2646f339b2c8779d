"""Packing retrieved passages into the prompt, and reading citations out of an answer."""

from __future__ import annotations

from api.chat.prompt import Passage, Turn, cited_numbers, keep_history, pack, source_block


def passage(n: int, text: str = "text", page: int | None = None) -> Passage:
    return Passage(
        chunk_id=f"c{n}",
        document_id=f"d{n}",
        title=f"Doc {n}",
        version=1,
        page=page,
        heading=None,
        score=1.0 / n,
        text=text,
    )


def test_passages_are_kept_whole_in_relevance_order_and_a_long_one_is_skipped() -> None:
    passages = [passage(1), passage(2), passage(3), passage(4)]
    # The second is too long for what is left after the first; the third and fourth fit.
    assert pack(passages, [40, 70, 30, 20], room=100) == [0, 2, 3]
    assert pack(passages, [40, 70, 30, 20], room=39) == [2]
    assert pack(passages, [40, 70, 30, 20], room=0) == []


def test_history_keeps_the_newest_turns_and_starts_with_a_question() -> None:
    turns = [
        Turn("user", "q1"),
        Turn("assistant", "a1"),
        Turn("user", "q2"),
        Turn("assistant", "a2"),
    ]
    # Each turn costs its tokens plus the template's 8.
    assert keep_history(turns, [10, 10, 10, 10], room=80) == turns
    assert keep_history(turns, [10, 10, 10, 10], room=40) == turns[2:]
    # Room for three turns would start with an answer: that answer is dropped too.
    assert keep_history(turns, [10, 10, 10, 10], room=54) == turns[2:]
    assert keep_history(turns, [10, 10, 10, 10], room=10) == []


def test_citations_are_read_in_order_of_first_mention_and_unknown_numbers_ignored() -> None:
    answer = "Copper is in aisle twelve [2]. It moves on Tuesdays [1, 2][3]; see also [9] and [x]."
    assert cited_numbers(answer, available=3) == [2, 1, 3]
    assert cited_numbers("No sources were useful.", available=3) == []


def test_a_source_block_names_its_number_document_and_page() -> None:
    block = source_block(3, passage(1, "Copper wire is in aisle twelve.", page=4))
    assert block.splitlines() == ["[3] (Doc 1, page 4)", "Copper wire is in aisle twelve."]
