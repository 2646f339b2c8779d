"""The shared analyzer and sparse weights: what ingest and query must agree on."""

from __future__ import annotations

import subprocess
import sys

import pytest

from haven import lexical
from haven.lexical import BM25


def test_analyze_lowercases_splits_unicode_words_drops_stop_words_and_stems() -> None:
    assert lexical.analyze("The Proteins were RUNNING in the cells_of mice.") == [
        "protein",
        "run",
        "cell",
        "mice",
    ]
    # Unicode letters are words; NFKC folds the ligature and full-width forms.
    folded = lexical.analyze("Straße \ufb01ber \uff21\uff22\uff23 café")
    assert folded == ["strass", "fiber", "abc", "café"]


def test_inflections_share_one_token_id_and_stop_words_have_none() -> None:
    doc = lexical.document_vector("studies")
    assert doc.indices == lexical.query_vector("studying studied").indices
    assert lexical.query_vector("the and of").indices == []


def test_token_ids_are_stable_across_processes() -> None:
    # Python's hash() is salted per process; the index must not depend on it.
    code = "from haven.lexical import token_id; print(token_id('protein'))"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert outputs == {str(lexical.token_id("protein"))}
    assert 0 <= lexical.token_id("protein") < 2**32


def test_document_weights_saturate_with_term_frequency() -> None:
    bm25 = BM25(k1=1.2, b=0.0, avg_length=10)  # b=0: no length effect
    weights = [
        dict(zip(v.indices, v.values, strict=True))[lexical.token_id("cell")]
        for v in (lexical.document_vector(" ".join(["cell"] * tf), bm25) for tf in (1, 2, 10))
    ]
    assert weights[0] == pytest.approx(1.0)  # tf=1 at average length: (k1+1)/(1+k1)
    assert weights[0] < weights[1] < weights[2] < bm25.k1 + 1


def test_longer_documents_weigh_a_term_less() -> None:
    bm25 = BM25(avg_length=5)
    short = lexical.document_vector("cell growth", bm25)
    long = lexical.document_vector("cell growth " + "protein " * 20, bm25)
    cell = lexical.token_id("cell")
    assert (
        dict(zip(long.indices, long.values, strict=True))[cell]
        < dict(zip(short.indices, short.values, strict=True))[cell]
    )


def test_query_vector_weighs_each_distinct_term_once() -> None:
    vector = lexical.query_vector("cell cells CELL growth")
    assert sorted(vector.indices) == sorted({lexical.token_id("cell"), lexical.token_id("growth")})
    assert vector.values == [1.0, 1.0]
    assert vector.indices == sorted(vector.indices)
