"""Is an answer's checkable content in the sources it was given?

A small model answers fluently and invents figures with the same confidence as it copies
them. This check is lexical and cheap (no second model call): the figures, dates, codes and
names of the answer are looked up in the passages the prompt offered, and each one that
appears in none of them is reported as unsupported, so the user sees "unverified" next to an
invented number instead of taking it as fact. A figure, date or code that is in a source is
then read in its context: when the words around it in the answer (and the question's) are not
near it in any source sentence but near another figure, it is reported too, with the
sentence it came from (``_out_of_context``). It works on English and Russian text. The same
word overlap tells which passages an answer without ``[n]`` markers draws on (``attribute``).

What counts as a claim:

- **numbers**: ``30``, ``30 дней``, ``1 000``, ``1,000``, ``2,5``, ``15%``; the same value
  written with other group or decimal separators, or spelled out in the source ("thirty",
  "пятьсот"), is the same number. A list marker at the start of a line (``1.``) is not a claim.
- **dates**: ``2025-03-12``, ``12.03.2025``, ``12 March 2025``, ``March 12``, ``12 марта``;
  supported when a source has the same day and month (and the same year when both give one).
- **codes**: tokens mixing letters (one of them upper case) and digits: ``HR-204``, ``Q3``,
  ``ISO-9001``; compared without case and separators.
- **names**: capitalised words, Latin or Cyrillic, and acronyms (``Zurich``, ``Анна Петрова``,
  ``HR``), compared by their stems so that inflected forms match (``Цюрихе`` / ``Цюрих``). The
  first word of a sentence is capitalised whatever it is, so it is not checked on its own.
"""

from __future__ import annotations

import math
import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, Literal

import snowballstemmer

from haven.lexical import STOP_WORDS

Kind = Literal["number", "date", "code", "name"]

# Citation markers are the answer's own apparatus, not claims.
_CITATION = re.compile(r"\[\d+(?:\s*,\s*\d+)*\]")

_MONTHS: dict[str, int] = {
    **{
        name: n
        for n, names in enumerate(
            [
                ("january", "jan"),
                ("february", "feb"),
                ("march", "mar"),
                ("april", "apr"),
                ("may",),
                ("june", "jun"),
                ("july", "jul"),
                ("august", "aug"),
                ("september", "sep", "sept"),
                ("october", "oct"),
                ("november", "nov"),
                ("december", "dec"),
            ],
            start=1,
        )
        for name in names
    },
}
# Russian month names by stem: "марта", "марте", "март" all start with "март".
_RU_MONTHS = (
    ("январ", 1),
    ("феврал", 2),
    ("март", 3),
    ("апрел", 4),
    ("ма", 5),
    ("июн", 6),
    ("июл", 7),
    ("август", 8),
    ("сентябр", 9),
    ("октябр", 10),
    ("ноябр", 11),
    ("декабр", 12),
)
_MONTH_WORD = r"(?:[A-Za-z]{3,9}\.?|[а-яё]{3,8})"

_ISO_DATE = re.compile(r"(?<![\d.])(\d{4})-(\d{1,2})-(\d{1,2})(?![\d])")
_NUMERIC_DATE = re.compile(r"(?<![\d.,])(\d{1,2})([./])(\d{1,2})\2(\d{4}|\d{2})(?![\d])")
_DAY_MONTH = re.compile(
    rf"(?<![\d.,])(\d{{1,2}})(?:st|nd|rd|th|-?го|-?е)?\s+({_MONTH_WORD})(?:,?\s+(\d{{4}}))?",
    re.IGNORECASE,
)
_MONTH_DAY = re.compile(
    rf"\b({_MONTH_WORD})\s+(\d{{1,2}})(?:st|nd|rd|th)?(?![\d])(?:,?\s+(\d{{4}}))?",
    re.IGNORECASE,
)
# Letters and digits joined by - / _ , with at least one digit and one letter.
_TOKEN = re.compile(r"[^\W_]+(?:[-/_][^\W_]+)*")
# 1 000 / 1 000 000 (spaces, no-break spaces), 1,000 / 1,000.5, then plain 30 / 2,5 / 2.5.
_NUMBER = re.compile(
    r"(?<![\w.,])(?:"
    r"\d{1,3}(?:[ \u00a0\u202f]\d{3})+(?![\d])"
    r"|\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d])"
    r"|\d+(?:[.,]\d+)?"
    r")"
)
_LIST_MARKER = re.compile(r"(?m)^[ \t]*\d{1,2}[.)][ \t]")
_CAPITALISED = re.compile(r"(?<![\w'\u2019-])(?:[A-ZА-ЯЁ][a-zа-яё'\u2019]+|[A-ZА-ЯЁ]{2,})(?![\w])")
_WORD = re.compile(r"[^\W\d_]+")
# Where a sentence (or a list item, or a heading) starts: the word after it is capitalised
# by grammar, not because it is a name.
_SENTENCE_START = re.compile(r"(?:^|[.!?:;…]\s+|\n\s*(?:[-*•#>]+\s*)?|[(«\"“]\s*)$")

_EN_NUMBERS = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
    "hundred": 100,
    "thousand": 1000,
    "million": 1_000_000,
}
# Russian numerals by stem (longest first when matched), so inflected forms count too:
# "тридцать", "тридцати", "тридцатью".
_RU_NUMBERS = {
    "ноль": 0,
    "нол": 0,
    "один": 1,
    "одн": 1,
    "два": 2,
    "две": 2,
    "двух": 2,
    "двум": 2,
    "тр": 3,
    "четыр": 4,
    "четыре": 4,
    "пят": 5,
    "шест": 6,
    "сем": 7,
    "восем": 8,
    "восьм": 8,
    "девят": 9,
    "десят": 10,
    "одиннадцат": 11,
    "двенадцат": 12,
    "тринадцат": 13,
    "четырнадцат": 14,
    "пятнадцат": 15,
    "шестнадцат": 16,
    "семнадцат": 17,
    "восемнадцат": 18,
    "девятнадцат": 19,
    "двадцат": 20,
    "тридцат": 30,
    "сорок": 40,
    "пятьдесят": 50,
    "пятидесят": 50,
    "шестьдесят": 60,
    "шестидесят": 60,
    "семьдесят": 70,
    "семидесят": 70,
    "восемьдесят": 80,
    "восьмидесят": 80,
    "девяност": 90,
    "сто": 100,
    "ста": 100,
    "двест": 200,
    "двухсот": 200,
    "трист": 300,
    "трехсот": 300,
    "трёхсот": 300,
    "четырест": 400,
    "четырехсот": 400,
    "пятьсот": 500,
    "пятисот": 500,
    "шестьсот": 600,
    "шестисот": 600,
    "семьсот": 700,
    "семисот": 700,
    "восемьсот": 800,
    "восьмисот": 800,
    "девятьсот": 900,
    "девятисот": 900,
    "тысяч": 1000,
    "миллион": 1_000_000,
}
# Short stems ("тр", "сем", "пят") match only words this much longer, so that "трава" or
# "семья" are not numbers.
_RU_EXACT = {
    "тр": ("три", "трех", "трёх", "трем", "трём", "тремя"),
    "сем": ("семь", "семи", "семью"),
    "пят": ("пять", "пяти", "пятью"),
    "шест": ("шесть", "шести", "шестью"),
    "сто": ("сто",),
    "ста": ("ста",),
    "одн": ("одна", "одно", "одной", "одну", "одного", "одному"),
    "один": ("один",),
    "нол": ("нуля", "нолю"),
}
_RU_STEMS = sorted(_RU_NUMBERS, key=len, reverse=True)

# Capitalised by grammar wherever they stand.
_NOT_NAMES = frozenset({"I", "I'm", "I've", "I'll", "I'd", "I\u2019m", "OK"})

_local = threading.local()  # snowballstemmer's stemmers keep state: one set per thread

NOT_IN_SOURCES = "in no offered source"


@dataclass(frozen=True)
class Span:
    """A piece of the answer that no source supports."""

    text: str
    kind: Kind
    start: int
    end: int
    # Why it is unsupported, in words a user reads beside the span.
    reason: str = NOT_IN_SOURCES

    def as_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "kind": self.kind,
            "start": self.start,
            "end": self.end,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Grounding:
    unsupported: tuple[Span, ...]

    @property
    def grounded(self) -> bool:
        return not self.unsupported

    def as_dict(self) -> dict[str, Any]:
        return {"grounded": self.grounded, "unsupported": [s.as_dict() for s in self.unsupported]}


def check(answer: str, sources: Iterable[str], question: str = "") -> Grounding:
    """The claims of ``answer`` found in none of ``sources``, and the figures, dates and codes
    found there only about something else (``question``, when given, is part of what the
    answer speaks about), in the order they appear."""
    material = list(sources)
    known = _Known.of(material)
    text = _CITATION.sub(lambda m: " " * len(m.group()), answer)
    taken = [False] * len(text)
    found: list[Span] = []
    # Claims some source holds: whether one holds them in the answer's context is next.
    held: list[_Claim] = []

    def free(start: int, end: int) -> bool:
        return not any(taken[start:end])

    def take(start: int, end: int) -> None:
        taken[start:end] = [True] * (end - start)

    for date in _dates(text):
        if free(date.start, date.end):
            take(date.start, date.end)
            if not known.has_date(date.value):
                found.append(Span(text[date.start : date.end], "date", date.start, date.end))
            else:
                held.append(_Claim("date", date.value, date.start, date.end))
    for match in _TOKEN.finditer(text):
        token = match.group()
        if not _is_code(token) or not free(match.start(), match.end()):
            continue
        take(match.start(), match.end())
        if _code_key(token) not in known.codes:
            found.append(Span(token, "code", match.start(), match.end()))
        else:
            held.append(_Claim("code", _code_key(token), match.start(), match.end()))
    markers = {m.end() - 2 for m in _LIST_MARKER.finditer(text)}
    for match in _NUMBER.finditer(text):
        if not free(match.start(), match.end()) or match.end() in markers:
            continue
        take(match.start(), match.end())
        value = _number_value(match.group())
        unit = _unit_after(text, match.end())
        if value is None:
            continue
        if not known.has_number(value, unit and unit[0]):
            # A figure in no source is the number; one the sources give in another unit is
            # the number with its unit ("250 EUR" where they say 250 CHF).
            end = unit[1] if unit and value in known.numbers else match.end()
            found.append(Span(text[match.start() : end], "number", match.start(), end))
        else:
            held.append(_Claim("number", value, match.start(), match.end()))
    if held:
        asked = frozenset(w[2] for w in _words(question, 0, len(question)))
        found.extend(_out_of_context(text, held, _Sentences.of(material), asked))
    found.extend(_unsupported_names(text, known, free))
    found.sort(key=lambda s: s.start)
    return Grounding(tuple(found))


# -- figures in their context ----------------------------------------------------------------

# A small model copies a real figure from the wrong sentence of a passage ("leave is 3 days"
# where the passage says "a sick note after 3 days" and "30 days of annual leave"): the figure
# is in a source, but not about what the answer says. The words around the answer's figure
# (and the question's) are therefore looked for around that figure in the sources: when no
# source sentence that holds the figure shares a word with them, while one holding another
# figure does, or when one holding another figure shares more than twice as much, the figure
# is reported with the sentence it came from. Words are compared by their Snowball stems,
# each weighted by how few source sentences hold it; function words, units and month names
# do not count (the unit is checked on its own).

# Words each side of a figure that count as its context, within its sentence.
CONTEXT_WORDS = 12

# Russian function words; the English ones are haven.lexical's.
_RU_STOP_WORDS_TEXT = """
    и в во не что на я с со как а то все она так его но да ты к у же вы за бы по только ее
    мне было вот от меня еще нет о из ему когда даже ли если уже или ни быть был до вас там
    себя ей может они тут где есть надо ней для мы тебя их чем была сам без кто этот того
    этого какой какая какие какое ним здесь этом чтобы сейчас были куда можно при об после над
    через эти нас про всего них много сколько который которая которые
"""
_RU_STOP_WORDS = frozenset(_RU_STOP_WORDS_TEXT.split())
_TERM = re.compile(r"[^\W\d_]{3,}")
# A sentence ends at its punctuation, a blank line, or a line that starts a list item or a
# heading; a line wrapped inside a paragraph goes on.
_SENTENCE_END = re.compile(r"[.!?…](?=\s|$)|\n(?=[ \t]*(?:\n|[-*•#>]|\d{1,2}[.)]\s))")
_QUOTE_CHARS = 100


def terms(text: str) -> set[str]:
    """The stems of the content words of ``text`` (English or Russian, function words left
    out)."""
    return {stem(word) for word in _TERM.findall(text.casefold()) if not _function_word(word)}


def _function_word(word: str) -> bool:
    return word in STOP_WORDS or word.replace("ё", "е") in _RU_STOP_WORDS


def _context_word(word: str) -> bool:
    return not _function_word(word) and _unit_of(word) is None and _month(word) is None


@dataclass(frozen=True)
class _Claim:
    kind: Kind
    key: Any  # the number's value, the date's (year, month, day), the code's key
    start: int
    end: int

    def held_by(self, figure: _Figure) -> bool:
        if self.kind != figure.kind:
            return False
        if self.kind != "date":
            return bool(self.key == figure.key)
        year, month, day = self.key
        y, m, d = figure.key
        return (m, d) == (month, day) and (year is None or y is None or y == year)


@dataclass(frozen=True)
class _Figure:
    """A figure, date or code of a source, with the words around it in its sentence."""

    kind: Kind
    key: Any
    stems: frozenset[str]
    sentence: str
    # The scripts of the sentence's words (Latin, Cyrillic).
    scripts: frozenset[str]


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        if text[start : match.end()].strip():
            spans.append((start, match.end()))
        start = match.end()
    if text[start:].strip():
        spans.append((start, len(text)))
    return spans


def _words(text: str, start: int, end: int) -> list[tuple[int, int, str]]:
    """The context words of ``text[start:end]``: where each is and its stem."""
    return [
        (m.start(), m.end(), stem(m.group()))
        for m in _TERM.finditer(text, start, end)
        if _context_word(m.group().casefold())
    ]


def _around(words: list[tuple[int, int, str]], start: int, end: int) -> frozenset[str]:
    """The stems of up to ``CONTEXT_WORDS`` words each side of ``text[start:end]``."""
    before = [w for w in words if w[1] <= start]
    after = [w for w in words if w[0] >= end]
    near = before[max(0, len(before) - CONTEXT_WORDS) :] + after[:CONTEXT_WORDS]
    return frozenset(w[2] for w in near)


def _figures_of(text: str) -> list[tuple[Kind, Any, int, int]]:
    """Every number (also spelled out, or inside a code or a date), date and code of a
    sentence, with where it is (a spelled-out number: the whole sentence)."""
    figures: list[tuple[Kind, Any, int, int]] = []
    spans = []
    for match in _NUMBER.finditer(text):
        value = _number_value(match.group())
        if value is not None:
            figures.append(("number", value, *match.span()))
            spans.append(match.span())
    for run in re.finditer(r"\d+", text):
        if not any(a <= run.start() and run.end() <= b for a, b in spans):
            figures.append(("number", Decimal(int(run.group())), *run.span()))
    figures.extend(("number", Decimal(v), 0, 0) for v in _spelled_numbers(text))
    figures.extend(("date", d.value, d.start, d.end) for d in _dates(text))
    figures.extend(
        ("code", _code_key(m.group()), *m.span())
        for m in _TOKEN.finditer(text)
        if any(c.isdigit() for c in m.group()) and any(c.isalpha() for c in m.group())
    )
    return figures


@dataclass(frozen=True)
class _Sentences:
    figures: tuple[_Figure, ...]
    # How much a shared word tells: a word of few source sentences ("parental") more than
    # one of many ("leave" in a leave policy), by its inverse sentence frequency.
    weights: dict[str, float]

    def overlap(self, context: frozenset[str], figure: _Figure) -> float:
        return sum(self.weights.get(word, 0.0) for word in context & figure.stems)

    @classmethod
    def of(cls, sources: Sequence[str]) -> _Sentences:
        figures: list[_Figure] = []
        frequency: Counter[str] = Counter()
        sentences = 0
        for source in sources:
            text = unicodedata.normalize("NFKC", source)
            for start, end in _sentence_spans(text):
                sentence = text[start:end]
                words = _words(sentence, 0, len(sentence))
                everything = frozenset(w[2] for w in words)
                frequency.update(everything)
                sentences += 1
                scripts = frozenset(_script(w) for w in everything)
                for kind, key, a, b in _figures_of(sentence):
                    near = _around(words, a, b) if b > a else everything
                    figures.append(_Figure(kind, key, near, " ".join(sentence.split()), scripts))
        weights = {word: math.log((sentences + 1) / n) for word, n in frequency.items()}
        return cls(tuple(figures), weights)


def _quote(sentence: str) -> str:
    if len(sentence) > _QUOTE_CHARS:
        sentence = sentence[: _QUOTE_CHARS - 1].rsplit(" ", 1)[0] + " …"
    return f"\u201c{sentence}\u201d"


def _script(stem: str) -> str:
    return "cyrillic" if re.search(r"[а-я]", stem) else "latin"


def _out_of_context(
    text: str, claims: list[_Claim], sources: _Sentences, question: frozenset[str]
) -> list[Span]:
    """The claims that every source sentence holding them speaks of something else."""
    found: list[Span] = []
    # The answer's clauses: "the cap is 250 CHF; leave is 30 days" speaks of two things.
    clauses = [
        (start + a, start + b)
        for start, end in _sentence_spans(text)
        for a, b in _clause_spans(text[start:end])
    ]
    spans = [(c.start, c.end) for c in claims]
    for claim in claims:
        start, end = next(((a, b) for a, b in clauses if a <= claim.start < b), (0, len(text)))
        words = [
            w for w in _words(text, start, end) if not any(a < w[1] and w[0] < b for a, b in spans)
        ]
        context = _around(words, claim.start, claim.end) | question
        # Only sentences in the context's own language can be compared with it (an English
        # answer from a Russian passage shares its figures, not its words).
        scripts = {_script(s) for s in context}
        holders = [f for f in sources.figures if claim.held_by(f) and f.scripts & scripts]
        if not holders:
            continue
        support = max(holders, key=lambda f: sources.overlap(context, f))
        best = max(sources.figures, key=lambda f: sources.overlap(context, f))
        shared, most = sources.overlap(context, support), sources.overlap(context, best)
        # Nothing near the figure is what the answer speaks of, while the sources speak of
        # that with another figure; or another figure is spoken of in more than twice as
        # many of the answer's words.
        if most > 2 * shared:
            reason = (
                f"the sources give it about something else: {_quote(support.sentence)};"
                f" on this they say {_quote(best.sentence)}"
            )
            found.append(
                Span(text[claim.start : claim.end], claim.kind, claim.start, claim.end, reason)
            )
    return found


def _clause_spans(sentence: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for match in re.finditer(r";\s", sentence):
        spans.append((start, match.start()))
        start = match.end()
    spans.append((start, len(sentence)))
    return spans


def attribute(answer: str, sources: Sequence[str]) -> list[int]:
    """The indexes of ``sources`` an answer without citation markers draws on: for each of
    its sentences, the source sharing the most of its words, figures and codes (a figure or
    a code counts twice), if that is at least two and half of the sentence's, and no other
    source shares as much."""
    features = [_features(unicodedata.normalize("NFKC", s)) for s in sources]
    drawn: list[int] = []
    text = _CITATION.sub(lambda m: " " * len(m.group()), answer)
    for start, end in _sentence_spans(text):
        own = _features(text[start:end])
        weight = sum(own.values())
        scores = [sum(w for f, w in own.items() if f in theirs) for theirs in features]
        if not scores or weight == 0:
            continue
        top = max(scores)
        index = scores.index(top)
        if top >= 2 and 2 * top >= weight and scores.count(top) == 1 and index not in drawn:
            drawn.append(index)
    return drawn


def _features(text: str) -> dict[str, int]:
    features = {word: 1 for word in terms(text)}
    for kind, key, _, _ in _figures_of(text):
        if kind != "date":
            features[f"{kind}:{key}"] = 2
    return features


# -- the sources' side ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Known:
    numbers: frozenset[Decimal]
    # Numbers the sources write with a unit ("250 CHF", "30 working days"), and those they
    # write without one (or spell out, or hold inside a code or a date).
    with_units: frozenset[tuple[Decimal, str]]
    bare: frozenset[Decimal]
    dates: frozenset[tuple[int | None, int, int]]
    codes: frozenset[str]
    stems: frozenset[str]

    @classmethod
    def of(cls, sources: Sequence[str]) -> _Known:
        numbers: set[Decimal] = set()
        with_units: set[tuple[Decimal, str]] = set()
        bare: set[Decimal] = set()
        dates: set[tuple[int | None, int, int]] = set()
        codes: set[str] = set()
        stems: set[str] = set()
        for source in sources:
            text = unicodedata.normalize("NFKC", source)
            spans = []
            for match in _NUMBER.finditer(text):
                value = _number_value(match.group())
                if value is None:
                    continue
                numbers.add(value)
                spans.append(match.span())
                unit = _unit_after(text, match.end())
                if unit is None:
                    bare.add(value)
                else:
                    with_units.add((value, unit[0]))
            # Digit runs inside codes and dates too: "HR-204" offers 204, "2025-03-12" 3.
            for run in re.finditer(r"\d+", text):
                if not any(a <= run.start() and run.end() <= b for a, b in spans):
                    numbers.add(Decimal(int(run.group())))
                    bare.add(Decimal(int(run.group())))
            spelled = {Decimal(v) for v in _spelled_numbers(text)}
            numbers |= spelled
            bare |= spelled
            dates.update(d.value for d in _dates(text))
            codes.update(_code_key(m.group()) for m in _TOKEN.finditer(text))
            stems.update(stem(word) for word in _WORD.findall(text))
        return cls(
            frozenset(numbers),
            frozenset(with_units),
            frozenset(bare),
            frozenset(dates),
            frozenset(codes),
            frozenset(stems),
        )

    def has_number(self, value: Decimal, unit: str | None) -> bool:
        """``value`` is in a source and, when the answer gives it a unit, with that unit
        (or somewhere without any): "250 EUR" is not supported by "250 CHF"."""
        if value not in self.numbers:
            return False
        return unit is None or (value, unit) in self.with_units or value in self.bare

    def has_date(self, value: tuple[int | None, int, int]) -> bool:
        year, month, day = value
        return any(
            (m, d) == (month, day) and (year is None or y is None or y == year)
            for y, m, d in self.dates
        )


# -- numbers ----------------------------------------------------------------------------------

# Units by the start of their word, English and Russian, singular and plural and inflected.
_UNITS: tuple[tuple[str, str], ...] = (
    ("day", "day"),
    ("дн", "day"),
    ("ден", "day"),
    ("hour", "hour"),
    ("час", "hour"),
    ("week", "week"),
    ("недел", "week"),
    ("month", "month"),
    ("месяц", "month"),
    ("year", "year"),
    ("лет", "year"),
    ("год", "year"),
    ("minute", "minute"),
    ("минут", "minute"),
    ("night", "night"),
    ("ноч", "night"),
    ("eur", "eur"),
    ("евро", "eur"),
    ("chf", "chf"),
    ("франк", "chf"),
    ("usd", "usd"),
    ("dollar", "usd"),
    ("доллар", "usd"),
    ("rub", "rub"),
    ("руб", "rub"),
    ("percent", "percent"),
    ("процент", "percent"),
    ("%", "percent"),
    ("character", "character"),
    ("символ", "character"),
)
# Up to two words after a number: "30 days", "30 working days", "250 CHF".
_AFTER_NUMBER = re.compile(r"[ \u00a0]*(%|[^\W\d_]+)(?:[ \u00a0]+([^\W\d_]+))?")


@lru_cache(maxsize=65536)
def _unit_of(word: str) -> str | None:
    word = word.casefold()
    return next((unit for start, unit in _UNITS if word.startswith(start)), None)


def _unit_after(text: str, end: int) -> tuple[str, int] | None:
    """The unit written after the number ending at ``end``, and where its word ends."""
    match = _AFTER_NUMBER.match(text, end)
    if match is None:
        return None
    for group in (1, 2):
        word = match.group(group)
        if word is not None and (unit := _unit_of(word)) is not None:
            return unit, match.end(group)
    return None


def _number_value(raw: str) -> Decimal | None:
    text = re.sub(r"[ \u00a0\u202f]", "", raw)
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", text):
        text = text.replace(",", "")  # 1,000 / 1,000.5: commas group thousands
    else:
        text = text.replace(",", ".")  # 2,5: a decimal comma
    try:
        return Decimal(text).normalize()
    except InvalidOperation:
        return None


@lru_cache(maxsize=65536)
def _numeral(word: str) -> int | None:
    if word in _EN_NUMBERS:
        return _EN_NUMBERS[word]
    for stem in _RU_STEMS:
        if word.startswith(stem):
            exact = _RU_EXACT.get(stem)
            if exact is not None:
                return _RU_NUMBERS[stem] if word in exact else None
            # An inflected form adds a few letters to the stem, never a whole other word.
            return _RU_NUMBERS[stem] if len(word) - len(stem) <= 4 else None
    return None


def _spelled_numbers(text: str) -> set[int]:
    """Every number spelled out in words, alone and combined: "five hundred" gives 5, 100
    and 500; "twenty-five" gives 25."""
    values: set[int] = set()
    total = current = 0
    in_number = False
    for word in re.findall(r"[^\W\d_]+|\d+|[^\w\s-]", text.casefold()):
        value = _numeral(word)
        if value is None:
            if word in ("and", "и") and in_number:
                continue
            if in_number:
                values.add(total + current)
            total = current = 0
            in_number = False
            continue
        values.add(value)
        in_number = True
        if value == 100:
            current = max(current, 1) * 100
        elif value >= 1000:
            total += max(current, 1) * value
            current = 0
        elif value >= 100:  # двести, триста...
            current += value
        else:
            current += value
    if in_number:
        values.add(total + current)
    return values


# -- dates ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Date:
    value: tuple[int | None, int, int]
    start: int
    end: int


@lru_cache(maxsize=65536)
def _month(word: str) -> int | None:
    word = word.casefold().rstrip(".")
    if word in _MONTHS:
        return _MONTHS[word]
    for stem, month in _RU_MONTHS:
        if word.startswith(stem) and (stem != "ма" or word in ("май", "мая", "мае", "маю")):
            return month
    return None


def _year(raw: str | None) -> int | None:
    if raw is None:
        return None
    year = int(raw)
    return year + 2000 if year < 100 else year


def _dates(text: str) -> list[_Date]:
    found: list[_Date] = []
    for m in _ISO_DATE.finditer(text):
        year, month, day = int(m.group(1)), int(m.group(2)), int(m.group(3))
        if 1 <= month <= 12 and 1 <= day <= 31:
            found.append(_Date((year, month, day), m.start(), m.end()))
    for m in _NUMERIC_DATE.finditer(text):
        first, second = int(m.group(1)), int(m.group(3))
        # Day first (European and Russian usage), unless that cannot be a date.
        day, month = (second, first) if second > 12 >= first else (first, second)
        if 1 <= month <= 12 and 1 <= day <= 31:
            found.append(_Date((_year(m.group(4)), month, day), m.start(), m.end()))
    for m in _DAY_MONTH.finditer(text):
        named = _month(m.group(2))
        day = int(m.group(1))
        if named is not None and 1 <= day <= 31:
            end = m.end() if m.group(3) else m.end(2)
            found.append(_Date((_year(m.group(3)), named, day), m.start(), end))
    for m in _MONTH_DAY.finditer(text):
        named = _month(m.group(1))
        day = int(m.group(2))
        if named is not None and 1 <= day <= 31:
            found.append(_Date((_year(m.group(3)), named, day), m.start(), m.end()))
    # Overlapping matches of different patterns: keep the first and longest.
    found.sort(key=lambda d: (d.start, -(d.end - d.start)))
    kept: list[_Date] = []
    for date in found:
        if not kept or date.start >= kept[-1].end:
            kept.append(date)
    return kept


# -- codes and names --------------------------------------------------------------------------


def _is_code(token: str) -> bool:
    has_digit = any(c.isdigit() for c in token)
    letters = [c for c in token if c.isalpha()]
    return has_digit and bool(letters) and any(c.isupper() for c in letters)


def _code_key(token: str) -> str:
    return re.sub(r"[-/_]", "", token.casefold())


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """The Snowball stem of an English or Russian word (by its script), case folded."""
    word = word.casefold().replace("ё", "е")
    stemmers = getattr(_local, "stemmers", None)
    if stemmers is None:
        stemmers = _local.stemmers = (
            snowballstemmer.stemmer("english"),
            snowballstemmer.stemmer("russian"),
        )
    english, russian = stemmers
    stemmer = russian if re.search(r"[а-я]", word) else english
    return str(stemmer.stemWord(word.rstrip("'\u2019")))


def _unsupported_names(text: str, known: _Known, free: Any) -> list[Span]:
    spans: list[Span] = []
    for match in _CAPITALISED.finditer(text):
        start, end = match.span()
        word = match.group()
        if not free(start, end) or word in _NOT_NAMES or _month(word) is not None:
            continue
        if _SENTENCE_START.search(text[max(0, start - 8) : start]) and not word.isupper():
            continue
        if stem(word) in known.stems:
            continue
        # Adjacent unsupported words make one name: "Anna Petrova", not two.
        if spans and spans[-1].kind == "name" and text[spans[-1].end : start] in (" ", "-"):
            previous = spans.pop()
            spans.append(Span(text[previous.start : end], "name", previous.start, end))
        else:
            spans.append(Span(word, "name", start, end))
    return spans
