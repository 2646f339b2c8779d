"""The language of a text: each chunk at ingest, each query at search.

Detection is Lingua (``lingua-language-detector``): a Rust library with its n-gram models
inside the wheel, so it runs offline, needs no model download and no fastText; it is kept up
to date and is accurate on short text (a query of three words), which is what a search
needs. It is restricted to the languages an installation is configured for
(``HAVEN_LANGUAGES``, default ``en,ru``): fewer candidates make it faster and keep it from
calling a short English query Dutch. The cost per chunk is in ``bench/RESULTS.md``.

A text is ``und`` (undetermined) when it has too few letters to tell (codes, numbers, a
table of figures) or when no configured language is likely enough. Mixed text gets the
language most of its letters are written in.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache

from lingua import IsoCode639_1, Language, LanguageDetector, LanguageDetectorBuilder

UNDETERMINED = "und"
DEFAULT_LANGUAGES = ("en", "ru")
# Fewer letters than this and a text is not worth guessing about ("Q3", "ISO 9001").
MIN_LETTERS = 3
# Longer texts are judged by their start: a chunk's language does not change past it, and
# Lingua's time grows with the text.
MAX_CHARS = 2000

_lock = threading.Lock()


def parse_languages(value: str | Iterable[str]) -> tuple[str, ...]:
    """``"en, ru"`` or ``["en", "ru"]`` → ``("en", "ru")``; unknown codes are refused."""
    items = value.split(",") if isinstance(value, str) else list(value)
    codes = tuple(dict.fromkeys(code.strip().lower() for code in items if code.strip()))
    for code in codes:
        _language(code)
    return codes


def _language(code: str) -> Language:
    try:
        return Language.from_iso_code_639_1(getattr(IsoCode639_1, code.upper()))
    except (AttributeError, ValueError) as exc:
        raise ValueError(f"{code!r} is not an ISO 639-1 language code Lingua knows") from exc


@lru_cache(maxsize=8)
def _detector(codes: tuple[str, ...]) -> LanguageDetector:
    with _lock:  # building loads the models: once per language set and process
        return (
            LanguageDetectorBuilder.from_languages(*(_language(code) for code in codes))
            .with_preloaded_language_models()
            .build()
        )


class Detector:
    """Language detection restricted to ``languages`` (ISO 639-1 codes)."""

    def __init__(self, languages: Sequence[str] = DEFAULT_LANGUAGES) -> None:
        self.languages = parse_languages(languages)
        if not self.languages:
            raise ValueError("at least one language must be configured")

    def detect(self, text: str) -> str:
        """The ISO 639-1 code of ``text``'s language, or ``und``."""
        sample = text[:MAX_CHARS]
        if sum(ch.isalpha() for ch in sample) < MIN_LETTERS:
            return UNDETERMINED
        if len(self.languages) == 1:
            return self.languages[0]
        found = _detector(self.languages).detect_language_of(sample)
        if found is None:
            return UNDETERMINED
        return str(found.iso_code_639_1.name).lower()

    def warm(self) -> None:
        """Load the models now rather than on the first text (seconds at most)."""
        if len(self.languages) > 1:
            _detector(self.languages)


def main_language(chunks: Iterable[tuple[str, int]]) -> str:
    """A document's main language: the language of most of its text, from its chunks'
    (language, length) pairs; ``und`` when no chunk's language was determined."""
    weight: Counter[str] = Counter()
    for lang, length in chunks:
        if lang != UNDETERMINED:
            weight[lang] += max(length, 1)
    if not weight:
        return UNDETERMINED
    return weight.most_common(1)[0][0]
