"""The RAG prompt: passages packed into the model's context, numbered for citation.

Packing takes the passages in relevance order: a passage that does not fit what is left of the
budget is left out (a shorter, less relevant one may still fit). The budget is the model's
context minus the longest answer asked for, the instructions, the question and the
conversation history kept, and a margin for the chat template's own tokens.

Small models lose the question in a long prompt: with a small context (which is what small
models are served with) the prompt offers fewer passages, each cut at a sentence end to a
shorter length and without title labels (``passage_limits``); the question always comes
last.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from api.chat.grounding import terms

# Tokens a chat template adds around each message (role markers, turn separators), and
# around the whole prompt; generous for the templates Haven serves (Gemma, Llama, ChatML).
TEMPLATE_TOKENS_PER_MESSAGE = 8
TEMPLATE_TOKENS_BASE = 32
# History never takes more than this share of the context.
HISTORY_SHARE = 0.25

# Short and plain: a 135M-parameter model follows three sentences, not a paragraph (measured
# with bench/answers: a longer version with a reminder before the question got fewer facts
# right and made the model list the sources instead of answering).
RAG_INSTRUCTIONS = (
    "You answer questions about the organisation's documents. Use only the sources. "
    "Cite the source number in square brackets, like [1]. "
    "If the sources do not say, answer that you do not know."
)
PLAIN_INSTRUCTIONS = "You are Haven, a helpful assistant. Answer clearly and briefly."
NO_SOURCES_NOTE = "(No passage of the documents matched the question.)"

_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


@dataclass(frozen=True)
class Passage:
    """A retrieved chunk, before numbering."""

    chunk_id: str
    document_id: str
    title: str | None
    version: int | None
    page: int | None
    heading: str | None
    score: float
    text: str


@dataclass(frozen=True)
class Turn:
    role: str  # "user" | "assistant"
    content: str


def source_block(n: int, passage: Passage, compact: bool = False) -> str:
    """``[n] (title, page — heading)`` and the text; only ``[n]`` and the text when
    ``compact`` (a small model copies the labels instead of answering)."""
    if compact:
        return f"[{n}] {passage.text}"
    where = passage.title or "untitled"
    if passage.page is not None:
        where += f", page {passage.page}"
    if passage.heading:
        where += f" — {passage.heading}"
    return f"[{n}] ({where})\n{passage.text}"


def user_content(question: str, blocks: Sequence[str], rag: bool) -> str:
    if not rag:
        return question
    sources = "\n\n".join(blocks) if blocks else NO_SOURCES_NOTE
    return f"Sources:\n{sources}\n\nQuestion: {question}"


@dataclass(frozen=True)
class PassageLimits:
    count: int  # passages offered at most
    tokens: int | None  # tokens per passage at most (None: whole chunks)
    compact: bool  # passages without their title labels


def passage_limits(context_length: int) -> PassageLimits:
    """Fewer, shorter passages for a small context: a 4k-token model gets two passages
    of about 160 tokens without labels, an 8k one four of about 350, larger ones every
    passage retrieved, whole."""
    if context_length <= 4096:
        return PassageLimits(2, 160, compact=True)
    if context_length <= 8192:
        return PassageLimits(4, 350, compact=False)
    return PassageLimits(20, None, compact=False)


def by_question_terms(question: str, passages: Sequence[Passage]) -> list[int]:
    """Indexes of ``passages``, those holding more of the question's terms (stems, English
    or Russian) first, in retrieval order otherwise. Only a few passages reach a small model,
    and it answers from the first one it sees: that one should hold the words asked about."""
    wanted = terms(question)
    if not wanted:
        return list(range(len(passages)))
    coverage = [len(wanted & terms(p.text)) for p in passages]
    return sorted(range(len(passages)), key=lambda i: -coverage[i])


_SENTENCE_END = re.compile(r"[.!?…](?=\s)|\n")


def shorten(text: str, tokens: int, limit: int) -> tuple[str, int]:
    """``text`` (``tokens`` long) cut to about ``limit`` tokens at a sentence end, with the
    estimated tokens of what is kept; whole when it fits."""
    if tokens <= limit or not text:
        return text, tokens
    keep = int(len(text) * limit / tokens)
    ends = [m.end() for m in _SENTENCE_END.finditer(text, 0, keep)]
    # A sentence end in the second half of the budget; otherwise cut at a word.
    cut = ends[-1] if ends and ends[-1] >= keep // 2 else text.rfind(" ", 0, keep)
    if cut <= 0:
        cut = keep
    return text[:cut].rstrip() + " …", limit


@dataclass(frozen=True)
class Budget:
    context_length: int
    max_answer_tokens: int

    def answer_tokens(self, prompt_tokens: int) -> int:
        return min(self.max_answer_tokens, self.context_length - prompt_tokens)


def pack(
    passages: Sequence[Passage],
    passage_tokens: Sequence[int],
    room: int,
) -> list[int]:
    """Indexes of the passages that fit ``room`` tokens whole, in relevance order."""
    kept: list[int] = []
    for i, tokens in enumerate(passage_tokens):
        if tokens <= room:
            kept.append(i)
            room -= tokens
    return kept


def keep_history(turns: Sequence[Turn], turn_tokens: Sequence[int], room: int) -> list[Turn]:
    """The newest turns that fit ``room`` tokens, oldest first; a conversation is never
    resumed in the middle of a question and its answer (the oldest kept turn is a user's)."""
    kept: list[Turn] = []
    for turn, tokens in zip(reversed(turns), reversed(turn_tokens), strict=True):
        cost = tokens + TEMPLATE_TOKENS_PER_MESSAGE
        if cost > room:
            break
        kept.append(turn)
        room -= cost
    kept.reverse()
    while kept and kept[0].role != "user":
        kept.pop(0)
    return kept


def cited_numbers(answer: str, available: int) -> list[int]:
    """The source numbers an answer cites (``[2]``, ``[1, 3]``), in order of first mention;
    numbers that name no source are ignored."""
    seen: list[int] = []
    for match in _CITATION.finditer(answer):
        for part in match.group(1).split(","):
            n = int(part)
            if 1 <= n <= available and n not in seen:
                seen.append(n)
    return seen
