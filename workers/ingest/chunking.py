"""Token-aware chunking of normalised text blocks.

Chunks are measured in the embedding model's own tokens, so none is silently truncated by the
model. Text is cut at sentence boundaries (at paragraph boundaries when a chunk is already well
filled), each chunk stays inside one page and one section so its citation is exact, and
consecutive chunks of a section share about ``overlap_tokens`` of whole sentences so a passage
cut in two is still found whole in one of them.

Each sentence is tokenised once; the finished chunk is tokenised once more to record its exact
count (and to catch tokenizers whose counts are not additive across a space). The work is
linear in the size of the text.
"""

from __future__ import annotations

import hashlib
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import groupby, islice
from typing import Final, Protocol

from workers.ingest.extract import TextBlock


class Tokenizer(Protocol):
    """What chunking needs of a tokenizer; Hugging Face tokenizers satisfy it."""

    def encode(self, text: str, /, *, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, ids: list[int], /) -> str: ...


@dataclass(frozen=True, slots=True)
class ChunkDraft:
    position: int
    text: str
    page: int | None
    heading: str | None
    token_count: int  # without the model's special tokens
    sha256: str  # of ``text``, UTF-8


@dataclass(frozen=True, slots=True)
class _Unit:
    """A sentence (or a piece of an over-long one) with its exact token count."""

    text: str
    tokens: int
    starts_paragraph: bool
    # For the first unit of a paragraph, the whole paragraph's tokens; 0 otherwise.
    paragraph_tokens: int = 0


# A sentence ends at . ! ? or an ellipsis (then closing quotes or brackets) followed by a space
# and a capital, digit or opening quote; the CJK full stop, exclamation and question marks need
# no space.
_CJK_STOPS: Final = "\u3002\uff01\uff1f"
_SENTENCE_END = re.compile(f"[.!?\u2026]+[\"'\u201d\u2019\u00bb)\\]]*\\s+|[{_CJK_STOPS}]+\\s*")
_SENTENCE_OPENERS: Final = "\"'\u201c\u2018\u00ab(["
# Abbreviations after which a capital usually does not start a new sentence.
_ABBREVIATIONS: Final = frozenset(
    [
        "al",
        "approx",
        "cf",
        "dr",
        "e.g",
        "eq",
        "fig",
        "figs",
        "i.e",
        "inc",
        "jr",
        "mr",
        "mrs",
        "ms",
        "no",
        "prof",
        "ref",
        "refs",
        "sr",
        "st",
        "vol",
        "vs",
    ]
)
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


def split_sentences(paragraph: str) -> list[str]:
    """Split a paragraph into sentences, each with its whitespace collapsed."""
    sentences: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(paragraph):
        end = match.end()
        if end >= len(paragraph):
            break
        if match.group()[0] not in _CJK_STOPS:
            following = paragraph[end]
            if not (following.isupper() or following.isdigit() or following in _SENTENCE_OPENERS):
                continue
            word = paragraph[start : match.start()].rsplit(None, 1)[-1:]
            last_word = word[0].lower() if word else ""
            # "J. Smith" (an initial) and "Fig. 2" (an abbreviation) do not end sentences.
            if last_word in _ABBREVIATIONS or (len(last_word) == 1 and last_word.isalpha()):
                continue
        sentence = " ".join(paragraph[start:end].split())
        if sentence:
            sentences.append(sentence)
        start = end
    sentence = " ".join(paragraph[start:].split())
    if sentence:
        sentences.append(sentence)
    return sentences


class _Chunker:
    def __init__(self, tokenizer: Tokenizer, max_tokens: int, overlap_tokens: int) -> None:
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if not 0 <= overlap_tokens < max_tokens:
            raise ValueError("overlap_tokens must be at least 0 and less than max_tokens")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens
        self.additive = _counts_add_up(tokenizer)

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    # -- units

    def units(self, paragraphs: list[str]) -> list[_Unit]:
        """The section's paragraphs as units in order, none over ``max_tokens``."""
        result: list[_Unit] = []
        for paragraph in paragraphs:
            pieces: list[tuple[str, int]] = []
            for sentence in split_sentences(paragraph):
                tokens = self.count(sentence)
                if tokens <= self.max_tokens:
                    pieces.append((sentence, tokens))
                else:
                    pieces.extend(self.split_long(sentence, tokens))
            if pieces:
                total = sum(tokens for _, tokens in pieces)
                result.append(_Unit(pieces[0][0], pieces[0][1], True, total))
                result.extend(_Unit(text, tokens, False) for text, tokens in pieces[1:])
        return result

    def split_long(self, sentence: str, tokens: int) -> Iterator[tuple[str, int]]:
        """Cut a sentence of ``tokens`` tokens (over ``max_tokens``) into consecutive windows at
        word boundaries; a single word over the limit is cut into token windows and decoded.

        Each window's size is guessed from the sentence's characters per token and checked with
        one count (shrunk and counted again when the guess was too big), so the sentence is
        not tokenised word by word.
        """
        words = sentence.split(" ")
        target_chars = self.max_tokens * len(sentence) / tokens
        start = 0
        while start < len(words):
            take = 0
            chars = -1
            for word in islice(words, start, None):
                chars += len(word) + 1
                if take and chars > target_chars:
                    break
                take += 1
            while True:
                text = " ".join(words[start : start + take])
                count = self.count(text)
                if count <= self.max_tokens or take == 1:
                    break
                take = max(1, min(take - 1, take * self.max_tokens // count))
            if count > self.max_tokens:
                yield from self.token_windows(text)
            else:
                yield text, count
            start += take

    def token_windows(self, word: str) -> Iterator[tuple[str, int]]:
        ids = self.tokenizer.encode(word, add_special_tokens=False)
        start = 0
        while start < len(ids):
            end = min(start + self.max_tokens, len(ids))
            text = self.tokenizer.decode(ids[start:end]).strip()
            tokens = self.count(text)
            while tokens > self.max_tokens and end - start > 1:
                end -= max(1, tokens - self.max_tokens)
                text = self.tokenizer.decode(ids[start:end]).strip()
                tokens = self.count(text)
            if text:
                yield text, tokens
            start = end

    # -- packing

    def overlap(self, units: list[_Unit]) -> list[_Unit]:
        """The end of a chunk to repeat at the start of the next: whole trailing sentences up to
        ``overlap_tokens``, or the last words of the last sentence when it alone is longer."""
        if self.overlap_tokens == 0:
            return []
        carried: list[_Unit] = []
        tokens = 0
        for unit in reversed(units):
            if tokens + unit.tokens > self.overlap_tokens:
                break
            carried.append(unit)
            tokens += unit.tokens
        if carried:
            return carried[::-1]
        last = units[-1]
        words = last.text.split(" ")
        # Guess the number of trailing words from the sentence's characters per token, then
        # check it with one count (rarely two or three): counting word by word costs far more.
        budget = len(last.text) * self.overlap_tokens / last.tokens
        take = 0
        chars = -1
        for word in reversed(words[1:]):  # never the whole sentence: it did not fit
            chars += len(word) + 1
            if chars > budget:
                break
            take += 1
        while take:
            text = " ".join(words[-take:])
            tokens = self.count(text)
            if tokens <= self.overlap_tokens:
                return [_Unit(text, tokens, False)]
            take -= 1
        return []

    def pack(self, units: list[_Unit]) -> Iterator[tuple[str, int]]:
        """Greedy packing of a section's units into chunks of at most ``max_tokens``."""
        pending = deque(units)
        carried: list[_Unit] = []
        half = self.max_tokens // 2
        while pending:
            tokens = sum(unit.tokens for unit in carried)
            while carried and tokens + pending[0].tokens > self.max_tokens:
                tokens -= carried.pop(0).tokens
            body: list[_Unit] = []
            while pending:
                unit = pending[0]
                if body and tokens + unit.tokens > self.max_tokens:
                    break
                if (
                    body
                    and unit.starts_paragraph
                    and tokens >= half
                    and tokens + unit.paragraph_tokens > self.max_tokens
                ):
                    break  # the next paragraph would be cut anyway: cut before it
                body.append(pending.popleft())
                tokens += unit.tokens
            text, count = self.measure(carried + body)
            while count > self.max_tokens and len(carried) + len(body) > 1:
                if carried:
                    carried.pop(0)
                else:
                    pending.appendleft(body.pop())
                text, count = self.measure(carried + body)
            yield text, count
            carried = self.overlap(carried + body)

    def measure(self, units: list[_Unit]) -> tuple[str, int]:
        parts = [units[0].text]
        for unit in units[1:]:
            parts.append("\n\n" if unit.starts_paragraph else " ")
            parts.append(unit.text)
        text = "".join(parts)
        if self.additive:
            return text, sum(unit.tokens for unit in units)
        return text, self.count(text)


def _counts_add_up(tokenizer: Tokenizer) -> bool:
    """Whether the token count of "a b" is exactly that of "a" plus that of "b".

    True for BERT's WordPiece tokenizers (MiniLM, BGE, E5, GTE): they split the text at
    whitespace and punctuation before looking words up, so a chunk's count is the sum of its
    sentences' and re-tokenising every finished chunk, a third of the work, can be skipped.
    Byte-level BPE and SentencePiece tokenizers fold the space into the next token, so their
    chunks are counted again.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre_tokenizer = type(getattr(backend, "pre_tokenizer", None)).__name__
    normalizer = type(getattr(backend, "normalizer", None)).__name__
    return pre_tokenizer == "BertPreTokenizer" and normalizer in ("BertNormalizer", "NoneType")


def chunk_blocks(
    blocks: list[TextBlock],
    tokenizer: Tokenizer,
    *,
    max_tokens: int = 256,
    overlap_tokens: int = 32,
) -> list[ChunkDraft]:
    """Cut normalised blocks into chunks of at most ``max_tokens`` tokens (special tokens not
    counted). Consecutive blocks with the same page and heading form one section; a chunk never
    spans two sections. The output depends only on the input."""
    chunker = _Chunker(tokenizer, max_tokens, overlap_tokens)
    drafts: list[ChunkDraft] = []
    for (page, heading), section in groupby(blocks, key=lambda b: (b.page, b.heading)):
        paragraphs = [
            paragraph for block in section for paragraph in _PARAGRAPH_BREAK.split(block.text)
        ]
        for text, token_count in chunker.pack(chunker.units(paragraphs)):
            drafts.append(
                ChunkDraft(
                    position=len(drafts),
                    text=text,
                    page=page,
                    heading=heading,
                    token_count=token_count,
                    sha256=hashlib.sha256(text.encode()).hexdigest(),
                )
            )
    return drafts
