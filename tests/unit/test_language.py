"""Language detection of chunks and queries, restricted to the configured languages."""

from __future__ import annotations

import pytest

from haven.language import UNDETERMINED, Detector, main_language, parse_languages


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(("en", "ru"))


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("Сколько дней длится ежегодный отпуск?", "ru"),
        ("Заявление на отпуск подаётся через портал HR-7 не позднее чем за 14 дней.", "ru"),
        ("How long is the probation period?", "en"),
        ("Backups are encrypted with AES-256 and kept for 35 days.", "en"),
        # Mixed: most of the text decides.
        ("Релиз выкатывается через pipeline в GitLab CI каждые две недели.", "ru"),
        ("The release branch is frozen two days before релиз.", "en"),
        # Too little to tell.
        ("14.05.2026 — 300 000", UNDETERMINED),
        ("", UNDETERMINED),
    ],
)
def test_chunks_and_queries_get_their_language(detector: Detector, text: str, lang: str) -> None:
    assert detector.detect(text) == lang


def test_one_configured_language_is_every_text_with_letters() -> None:
    only = Detector(["en"])
    assert only.detect("Сколько дней длится отпуск?") == "en"
    assert only.detect("42") == UNDETERMINED


def test_languages_are_iso_codes_lingua_knows() -> None:
    assert parse_languages(" EN, ru,en ") == ("en", "ru")
    assert parse_languages(["de", "fr"]) == ("de", "fr")
    with pytest.raises(ValueError, match="xx"):
        parse_languages("en,xx")
    with pytest.raises(ValueError):
        Detector([])


def test_a_documents_main_language_is_that_of_most_of_its_text() -> None:
    assert main_language([("ru", 900), ("en", 300), ("en", 400)]) == "ru"
    assert main_language([("ru", 100), ("en", 300), (UNDETERMINED, 5000)]) == "en"
    assert main_language([(UNDETERMINED, 10)]) == UNDETERMINED
    assert main_language([]) == UNDETERMINED
