"""The lexical analyzer and sparse term weights shared by ingest and query.

Both sides must turn text into the same terms, so there is exactly one analyzer:
NFKC + case folding (and ё → е), Unicode word splitting, then per word by its script: a word
with Cyrillic letters gets Russian stop words and the Russian Snowball stemmer (its fleeting
vowel folded, see ``_fold_fleeting_vowel``), every other
word English stop words and the English Snowball (Porter 2) stemmer. Choosing per word, not
per text, means mixed Russian/English text (and a Russian query about an English term) is
analyzed the same on both sides without guessing a language first, and English text is
analyzed exactly as before Russian was supported.

Each stem becomes a 32-bit token id from a fixed hash (BLAKE2b), identical in every process
and release — Python's ``hash()`` is salted per process and would scatter the index.

``ANALYZER_ID`` names this analyzer and is stored with every indexed chunk; it changes
whenever the terms a text turns into change, so chunks indexed by another analyzer can be
found and re-indexed (``haven maintenance relex``).

Documents get BM25's term-frequency saturation with length normalisation; queries get 1 per
distinct term. IDF is not computed here: the vector store applies it (Qdrant's ``idf``
modifier on the sparse vector), so weights never need recomputing as the corpus grows.
"""

from __future__ import annotations

import hashlib
import re
import threading
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import snowballstemmer

from haven.contracts.embeddings import SparseVector

# Version of the analyzer: bump whenever analyze() gives other terms for the same text.
# 1: English only (every chunk indexed before Russian was supported); 2: English + Russian.
ANALYZER_ID = "snowball-en-ru/2"

# Letters and digits; underscores and punctuation split words.
_WORD = re.compile(r"[^\W_]+")
_CYRILLIC = re.compile(r"[\u0400-\u04ff\u0500-\u052f]")
MAX_TERM_LENGTH = 64  # longer "words" are noise (hashes, base64), not vocabulary

# The English stop words of Snowball's list (as in Lucene/NLTK), contractions split at the
# apostrophe the way the word splitter above splits them.
_STOP_WORDS_TEXT = """
    a about above after again against all am an and any are as at be because been before
    being below between both but by can cannot could d did do does doing down during each
    few for from further had has have having he her here hers herself him himself his how
    i if in into is it its itself just ll m me more most my myself no nor not now o of off
    on once only or other ought our ours ourselves out over own re s same shall she should
    so some such t than that the their theirs them themselves then there these they this
    those through to too under until up ve very was we were what when where which while
    who whom why will with would you your yours yourself yourselves
"""
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())

# Snowball's Russian stop words (as in NLTK), ё written е as the analyzer folds it, without
# the numerals один/два/три: "три дня" and "два раза" are what a question is about.
_RUSSIAN_STOP_WORDS_TEXT = """
    а без более бы был была были было быть в вам вас ведь во вот впрочем все всегда всего
    всех всю вы где да даже для до другой его ее ей ему если есть еще ж же за зачем здесь и
    из или им иногда их к как какая какой когда конечно кто куда ли лучше между меня мне
    много может можно мой моя мы на над надо наконец нас не него нее ней нельзя нет ни
    нибудь никогда ним них ничего но ну о об опять от перед по под после потом потому почти
    при про раз разве с сам свою себе себя сейчас со совсем так такой там тебя тем теперь
    то тогда того тоже только том тот тут ты у уж уже хорошо хоть чего чем через что чтоб
    чтобы чуть эти этого этой этом этот эту я
"""
RUSSIAN_STOP_WORDS = frozenset(_RUSSIAN_STOP_WORDS_TEXT.split())

_local = threading.local()  # snowballstemmer's stemmers keep state: one per thread


@dataclass(frozen=True)
class BM25:
    k1: float = 1.2
    b: float = 0.75
    avg_length: float = 100.0  # average analyzed terms per document (chunk)


def analyze(text: str) -> list[str]:
    """The stems of ``text`` in order, stop words removed."""
    folded = unicodedata.normalize("NFKC", text).casefold().replace("ё", "е")
    terms = []
    for word in _WORD.findall(folded):
        if len(word) > MAX_TERM_LENGTH:
            continue
        if _CYRILLIC.search(word):
            if word not in RUSSIAN_STOP_WORDS:
                terms.append(_fold_fleeting_vowel(_stem(word, "russian")))
        elif word not in STOP_WORDS:
            terms.append(_stem(word, "english"))
    return terms


def script_of(word: str) -> str:
    """The analyzer a word goes through: "russian" (any Cyrillic letter) or "english"."""
    return "russian" if _CYRILLIC.search(word) else "english"


_RUSSIAN_CONSONANTS = frozenset("бвгджзклмнпрстфхцчшщ")


def _fold_fleeting_vowel(stem: str) -> str:
    """Drop the о/е between the last two consonants of a Russian stem: the fleeting vowel
    (беглая гласная) that some forms of a word have and others lack — листок/листки,
    чисел/числа, заявка/заявок, отец/отца — which Snowball keeps, so the forms would stay
    apart. Applied to every stem, so each form of a word folds the same way; a word that
    never loses its vowel (договор/договора) just loses it in every form."""
    if (
        len(stem) >= 4
        and stem[-1] in _RUSSIAN_CONSONANTS
        and stem[-2] in "ое"
        and stem[-3] in _RUSSIAN_CONSONANTS
    ):
        return stem[:-2] + stem[-1]
    return stem


def token_id(term: str) -> int:
    return int.from_bytes(hashlib.blake2b(term.encode(), digest_size=4).digest(), "little")


def document_vector(text: str, bm25: BM25 = BM25()) -> SparseVector:
    """BM25 term-frequency weights of a document: tf·(k1+1) / (tf + k1·(1 - b + b·len/avg))."""
    terms = analyze(text)
    norm = bm25.k1 * (1 - bm25.b + bm25.b * len(terms) / bm25.avg_length)
    weights = {
        token_id(term): tf * (bm25.k1 + 1) / (tf + norm) for term, tf in Counter(terms).items()
    }
    return _sparse(weights)


def query_vector(text: str) -> SparseVector:
    """Weight 1 per distinct query term: the document side carries tf, the store the IDF."""
    return _sparse(dict.fromkeys((token_id(term) for term in analyze(text)), 1.0))


def _sparse(weights: dict[int, float]) -> SparseVector:
    indices = sorted(weights)
    return SparseVector(indices=indices, values=[weights[i] for i in indices])


@lru_cache(maxsize=131072)
def _stem(word: str, language: str) -> str:
    stemmers: dict[str, object] | None = getattr(_local, "stemmers", None)
    if stemmers is None:
        stemmers = _local.stemmers = {}
    stemmer = stemmers.get(language)
    if stemmer is None:
        stemmer = stemmers[language] = snowballstemmer.stemmer(language)
    return str(stemmer.stemWord(word))  # type: ignore[attr-defined]
