"""Cutting text into parts that keep their pages, and extract's parse, check and merge."""

from __future__ import annotations

from workers.analyze.pipeline import merge_values, parse_json, schema_error
from workers.analyze.split import Unit, cut_words, pack, units_of
from workers.ingest.extract import TextBlock


def test_parts_fill_the_budget_in_order_and_keep_their_pages() -> None:
    blocks = [
        TextBlock("one\n\ntwo", 1, "Intro"),
        TextBlock("three", 2, None),
        TextBlock("four\n\nfive", 3, None),
    ]
    units = units_of(blocks)
    assert [u.text for u in units] == ["Intro\none", "two", "three", "four", "five"]
    parts = pack(units, [4, 4, 4, 4, 4], budget=10)
    assert [(p.first_page, p.last_page) for p in parts] == [(1, 1), (2, 3), (3, 3)]
    assert parts[1].text == "three\n\nfour" and parts[1].pages == "pp. 2-3"
    assert all(p.tokens <= 10 for p in parts)
    assert [p.index for p in parts] == [0, 1, 2]


def test_long_units_are_cut_at_words() -> None:
    text = " ".join(f"w{i}" for i in range(100))
    pieces = cut_words(text, tokens=200, budget=50)
    assert " ".join(pieces) == text and len(pieces) >= 4
    blob = "x" * 1000  # one huge word: cut by characters
    assert "".join(cut_words(blob, tokens=400, budget=100)) == blob
    assert pack([Unit(None, "a")], [3], budget=5)[0].pages == ""


def test_extract_answers_are_parsed_checked_and_merged() -> None:
    schema = {
        "type": "object",
        "properties": {"dates": {"type": "array", "items": {"type": "string"}}},
        "required": ["dates"],
    }
    assert parse_json('Sure! {"dates": ["May 1"]} hope this helps') == {"dates": ["May 1"]}
    assert schema_error(schema, {"dates": ["May 1"]}) is None
    assert "dates" in (schema_error(schema, {"days": 1}) or "")
    assert schema_error(schema, {"dates": [3]}) == "at /dates/0: 3 is not of type 'string'"
    merged = merge_values([{"dates": ["May 1"]}, None, {"dates": ["May 1", "June 2"]}])
    assert merged == {"dates": ["May 1", "June 2"]}
    assert merge_values([[1], [2, 1]]) == [1, 2]
