"""The shared analyzer and sparse weights: what ingest and query must agree on."""

from __future__ import annotations

import os
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


# -- Russian and mixed text ---------------------------------------------------------------


def _ids(text: str) -> list[int]:
    return lexical.query_vector(text).indices


@pytest.mark.parametrize(
    "forms",
    [
        ("отпуск", "отпуска", "отпуском", "отпуске", "отпусков", "отпуску"),
        ("заявление", "заявления", "заявлений", "заявлением", "заявлению"),
        ("командировка", "командировки", "командировке", "командировку", "командировкой"),
        ("поставщик", "поставщика", "поставщиков", "поставщикам", "поставщиками"),
        ("пароль", "пароли", "паролей", "пароле", "паролем"),
        ("договор", "договора", "договоров", "договору", "договором"),
        # A fleeting vowel: present in some forms, gone in others.
        ("листок", "листки", "листка", "листков"),
        ("заявка", "заявки", "заявок", "заявкой"),
        ("число", "числа", "чисел", "числам"),
        ("окно", "окна", "окон"),
    ],
)
def test_russian_noun_cases_and_numbers_share_one_token(forms: tuple[str, ...]) -> None:
    ids = {tuple(_ids(form)) for form in forms}
    assert len(ids) == 1 and len(next(iter(ids))) == 1, forms


@pytest.mark.parametrize(
    "forms",
    [
        ("работать", "работает", "работают", "работал", "работала"),
        ("проводится", "проводят", "проводили", "проводит"),
        ("подаётся", "подается", "подаёт", "подать"),
        ("меняются", "менять", "меняют"),
        ("проверяют", "проверяется", "проверять"),
    ],
)
def test_russian_verb_forms_share_one_token(forms: tuple[str, ...]) -> None:
    ids = {tuple(_ids(form)) for form in forms}
    assert len(ids) == 1 and len(next(iter(ids))) == 1, forms


def test_a_russian_question_finds_the_inflected_words_of_a_russian_document() -> None:
    document = lexical.document_vector(
        "Заявление на отпуск подаётся через портал HR-7 не позднее чем за 14 дней."
    )
    query = lexical.query_vector("За сколько дней подавать заявления на отпуска?")
    shared = set(document.indices) & set(query.indices)
    for word in ("заявление", "отпуск", "дней"):
        assert lexical.token_id(lexical.analyze(word)[0]) in shared


def test_russian_stop_words_are_dropped_and_yo_is_folded() -> None:
    assert lexical.analyze("и в на по не что") == []
    assert lexical.analyze("Ёлка ёлки") == lexical.analyze("елка елки")
    # Numerals are what a question is about ("три дня"): kept.
    assert len(lexical.analyze("три дня")) == 2


def test_mixed_text_stems_each_word_in_its_own_language() -> None:
    terms = lexical.analyze("Релизы выкатываются через pipelines в GitLab CI, код ZP-40")
    assert terms == [
        lexical.analyze("релиз")[0],
        lexical.analyze("выкатывается")[0],
        "pipelin",
        "gitlab",
        "ci",
        "код",
        "zp",
        "40",
    ]
    # An English word in a Russian sentence stems as English, so an English query finds it.
    assert set(_ids("pipeline")) <= set(_ids("Релиз идёт через pipelines"))
    # English text is analyzed exactly as by the English-only analyzer of earlier releases.
    assert lexical.analyze("The Proteins were RUNNING") == ["protein", "run"]


def test_russian_token_ids_are_stable_across_processes() -> None:
    code = "from haven.lexical import query_vector; print(query_vector('отпусками').indices)"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert outputs == {str(lexical.query_vector("отпуск").indices)}
