"""Cutting documents into parts that fit the model's context, in the model's own tokens.

The text is first broken into units (paragraphs, each from one page); the caller counts their
tokens with the served model's tokenizer; ``pack`` fills parts with consecutive units of one
document up to a token budget, and a part remembers the pages its units came from, so every
result can cite them. A unit larger than the budget is cut at word boundaries
(``cut_words``) and counted again.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from workers.ingest.extract import TextBlock

SEPARATOR = "\n\n"
# Tokens a separator between two units may add when the part's text is tokenized whole.
SEPARATOR_TOKENS = 2
_PARAGRAPHS = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class Unit:
    page: int | None
    text: str


@dataclass(frozen=True)
class Part:
    index: int  # 0-based, within its document
    first_page: int | None
    last_page: int | None
    text: str
    tokens: int  # the sum of its units' counts, separators included

    @property
    def pages(self) -> str:
        return page_label(self.first_page, self.last_page)


def page_label(first: int | None, last: int | None) -> str:
    if first is None or last is None:
        return ""
    return f"p. {first}" if first == last else f"pp. {first}-{last}"


def units_of(blocks: Sequence[TextBlock]) -> list[Unit]:
    """Paragraphs, in order, each with its page; a section's heading opens its first one."""
    units: list[Unit] = []
    for block in blocks:
        paragraphs = [p.strip() for p in _PARAGRAPHS.split(block.text) if p.strip()]
        if block.heading and paragraphs:
            paragraphs[0] = f"{block.heading}\n{paragraphs[0]}"
        units.extend(Unit(block.page, p) for p in paragraphs)
    return units


def cut_words(text: str, tokens: int, budget: int) -> list[str]:
    """``text`` (``tokens`` long) in word-aligned pieces of about ``budget`` tokens each, a
    little under so that most need no second cut. A single word longer than the budget is
    cut by characters."""
    pieces = max(2, math.ceil(tokens * 1.15 / max(budget, 1)))
    words = text.split(" ")
    if len(words) < pieces:  # few, huge words (a URL, a base64 blob): cut by characters
        size = max(1, math.ceil(len(text) / pieces))
        return [text[i : i + size] for i in range(0, len(text), size)]
    size = math.ceil(len(words) / pieces)
    return [" ".join(words[i : i + size]) for i in range(0, len(words), size)]


def pack(units: Sequence[Unit], counts: Sequence[int], budget: int) -> list[Part]:
    """Consecutive units into parts of at most ``budget`` tokens (each unit must fit)."""
    parts: list[Part] = []
    current: list[Unit] = []
    used = 0

    def close() -> None:
        nonlocal current, used
        if current:
            pages = [u.page for u in current if u.page is not None]
            parts.append(
                Part(
                    index=len(parts),
                    first_page=min(pages) if pages else None,
                    last_page=max(pages) if pages else None,
                    text=SEPARATOR.join(u.text for u in current),
                    tokens=used,
                )
            )
        current, used = [], 0

    for unit, count in zip(units, counts, strict=True):
        cost = count + (SEPARATOR_TOKENS if current else 0)
        if current and used + cost > budget:
            close()
            cost = count
        current.append(unit)
        used += cost
    close()
    return parts
