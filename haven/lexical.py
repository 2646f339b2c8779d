"""The lexical analyzer and sparse term weights shared by ingest and query.

Both sides must turn text into the same terms, so there is exactly one analyzer:
NFKC + case folding, Unicode word splitting, English stop words, Snowball (Porter 2) stems.
Each stem becomes a 32-bit token id from a fixed hash (BLAKE2b), identical in every process
and release — Python's ``hash()`` is salted per process and would scatter the index.

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

# Letters and digits; underscores and punctuation split words.
_WORD = re.compile(r"[^\W_]+")
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

_local = threading.local()  # snowballstemmer's stemmers keep state: one per thread


@dataclass(frozen=True)
class BM25:
    k1: float = 1.2
    b: float = 0.75
    avg_length: float = 100.0  # average analyzed terms per document (chunk)


def analyze(text: str) -> list[str]:
    """The stems of ``text`` in order, stop words removed."""
    words = _WORD.findall(unicodedata.normalize("NFKC", text).casefold())
    return [
        _stem(word) for word in words if word not in STOP_WORDS and len(word) <= MAX_TERM_LENGTH
    ]


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


@lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    stemmer = getattr(_local, "stemmer", None)
    if stemmer is None:
        stemmer = _local.stemmer = snowballstemmer.stemmer("english")
    return str(stemmer.stemWord(word))
