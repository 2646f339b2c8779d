"""The grounding check: an invented figure, date, code or name is reported, a quoted one is
not, in English and in Russian."""

from __future__ import annotations

import re

import pytest

from api.chat.grounding import check

TRAVEL = (
    "Travel policy. Hotels in Zurich are capped at 250 CHF per night. Requests above "
    "1,000 EUR need approval from the finance team (form FIN-12). Policy HR-204 applies "
    "from 1 March 2025. Contact: Anna Petrova."
)
LEAVE_RU = (
    "Положение об отпусках. Ежегодный отпуск составляет 30 дней. Компенсация за обучение — "
    "до 1 000 рублей в месяц. Заявление по форме ОТ-7 подаётся за 14 дней, согласует "
    "Мария Иванова. Положение действует с 12.03.2025, офис в Цюрихе."
)


def unsupported(answer: str, *sources: str) -> list[tuple[str, str]]:
    return [(s.text, s.kind) for s in check(answer, sources).unsupported]


def test_an_answer_that_quotes_its_source_is_grounded() -> None:
    answer = (
        "Hotels in Zurich are capped at 250 CHF per night [1]. Anything above 1,000 EUR "
        "needs form FIN-12 and policy HR-204 applies from 1 March 2025 [1]; ask Anna Petrova."
    )
    result = check(answer, [TRAVEL])
    assert result.grounded, result.unsupported
    assert result.as_dict() == {"grounded": True, "unsupported": []}


def test_invented_figures_codes_dates_and_names_are_reported_with_their_place() -> None:
    answer = (
        "The hotel cap in Zurich is 300 CHF [1]. Use form FIN-99 before 15 March 2025, "
        "or ask John Smith."
    )
    result = check(answer, [TRAVEL])
    assert not result.grounded
    assert [(s.text, s.kind) for s in result.unsupported] == [
        ("300", "number"),
        ("FIN-99", "code"),
        ("15 March 2025", "date"),
        ("John Smith", "name"),
    ]
    first = result.unsupported[0]
    assert answer[first.start : first.end] == "300"


@pytest.mark.parametrize(
    ("answer", "source"),
    [
        ("The limit is 1 000 roubles.", "The limit is 1000 roubles."),
        ("The limit is 1,000 roubles.", "Лимит — 1 000 рублей."),
        ("The limit is 1000 roubles.", "The limit is 1,000 roubles."),
        ("Rate: 2,5 percent.", "Rate: 2.5 percent."),
        ("Leave is 30 days.", "Leave is thirty days."),
        ("Отпуск — 30 дней.", "Отпуск составляет тридцать дней."),
        ("Up to 500 euros.", "up to five hundred euros"),
        ("Сумма 2000 рублей.", "две тысячи рублей"),
        ("Starts on 2025-03-12.", "Действует с 12.03.2025."),
        ("Действует с 12 марта 2025 года.", "Effective 2025-03-12."),
        ("Effective March 12.", "effective 12 March 2025"),
        ("Code hr-204 applies; see HR-204.", "policy hr204"),
    ],
)
def test_the_same_value_written_another_way_is_supported(answer: str, source: str) -> None:
    assert unsupported(answer, source) == []


def test_russian_answers_are_checked_with_inflected_names() -> None:
    good = (
        "Отпуск составляет 30 дней [1]. Заявление по форме ОТ-7 согласует Мария Иванова, в Цюрихе."
    )
    assert unsupported(good, LEAVE_RU) == []
    bad = "Отпуск составляет 28 дней, заявление по форме ОТ-9 согласует Пётр Сидоров с 1 июня."
    assert unsupported(bad, LEAVE_RU) == [
        ("28", "number"),
        ("ОТ-9", "code"),
        ("Пётр Сидоров", "name"),
        ("1 июня", "date"),
    ]


def test_separators_do_not_make_a_different_number() -> None:
    # 1 000 is one thousand, not "1" and "000"; a wrong thousand is one wrong number.
    assert unsupported("До 1 000 рублей.", LEAVE_RU) == []
    assert unsupported("До 2 000 рублей.", LEAVE_RU) == [("2 000", "number")]
    assert unsupported("Up to 1,500 EUR.", TRAVEL) == [("1,500", "number")]


def test_citation_markers_list_numbers_and_sentence_starts_are_not_claims() -> None:
    answer = "1. Hotels are capped [1][2].\n2. Requests need approval [3].\nThe answer is short."
    assert unsupported(answer, TRAVEL) == []


def test_every_source_counts_and_no_source_supports_nothing() -> None:
    answer = "Hotels in Zurich cost 250 CHF; leave is 30 days."
    assert unsupported(answer, TRAVEL, LEAVE_RU) == []
    assert unsupported(answer) == [
        ("Zurich", "name"),
        ("250", "number"),
        ("CHF", "name"),
        ("30", "number"),
    ]


def test_an_answer_without_claims_is_grounded() -> None:
    assert check("I do not know.", [TRAVEL]).grounded
    assert check("Я не знаю.", [LEAVE_RU]).grounded
    assert check("", []).grounded


def test_a_figure_the_sources_give_in_another_unit_is_reported_with_its_unit() -> None:
    # Small models copy a number from the wrong sentence or change its unit.
    assert unsupported("The cap in Zurich is 250 EUR per night.", TRAVEL) == [("250 EUR", "number")]
    assert unsupported("Approval above 1,000 CHF.", TRAVEL) == [("1,000 CHF", "number")]
    assert unsupported("Отпуск — 30 недель.", LEAVE_RU) == [("30 недель", "number")]
    # The same unit, however it is inflected or qualified, is the same figure.
    assert unsupported("Отпуск — 30 дней, заявление за 14 дней.", LEAVE_RU) == []
    assert unsupported("Leave is 30 days.", "Leave is 30 working days.") == []
    assert unsupported("The cap is 250 CHF.", TRAVEL) == []
    # A figure the sources give without a unit cannot be checked for one.
    assert unsupported("It takes 3 days.", "Step 3 of the form.") == []


# A policy the way documents are written: several figures, each about its own thing.
LEAVE = (
    "# Leave policy\n\nEvery employee has 30 working days of paid annual leave per calendar"
    " year. Up to 5 unused days may be carried over.\n\nA sick note from a doctor is needed"
    " when an illness lasts longer than 3 days. Leave is requested on form HR-204."
)
OFFICE_RU = (
    "# Правила офиса\n\nНа парковке у здания 40 мест для сотрудников. Пропуск нового"
    " сотрудника выдаётся в течение 3 рабочих дней. Гостей регистрируют на ресепшене не"
    " позднее чем за 24 часа до визита по форме ОФ-2."
)


def in_context(answer: str, source: str, question: str = "") -> list[tuple[str, str]]:
    return [
        (s.text, s.kind)
        for s in check(answer, [source], question).unsupported
        if s.reason != "in no offered source"
    ]


def test_a_real_figure_copied_from_the_wrong_sentence_is_reported_with_that_sentence() -> None:
    # The question says what the figure is about when the answer does not.
    question = "How many days of paid annual leave does an employee get?"
    result = check("The answer is: 3 days.", [LEAVE], question)
    assert [(s.text, s.kind) for s in result.unsupported] == [("3", "number")]
    reason = result.unsupported[0].reason
    assert "longer than 3 days" in reason and "30 working days" in reason
    assert in_context("Employees get 5 days of paid annual leave.", LEAVE) == [("5", "number")]
    assert in_context("A sick note is needed after 30 days of illness.", LEAVE) == [
        ("30", "number")
    ]
    # The right figures in the same words are not.
    assert in_context("The answer is: 30 days.", LEAVE, question) == []
    assert in_context("A sick note is needed after 3 days of illness.", LEAVE) == []
    assert in_context("Up to 5 days can be carried over.", LEAVE, "What about unused days?") == []


def test_a_russian_figure_out_of_its_context_is_reported_in_any_inflection() -> None:
    question = "Сколько мест на парковке для сотрудников?"
    assert in_context("Ответ: 24 места.", OFFICE_RU, question) == [("24", "number")]
    assert in_context("На парковке 3 места.", OFFICE_RU) == [("3", "number")]
    assert in_context("Пропуск выдают за 24 часа.", OFFICE_RU) == [("24", "number")]
    # Inflected and reordered, the right figures stand.
    assert in_context("Ответ: 40 мест.", OFFICE_RU, question) == []
    assert in_context("Для сотрудников на парковке есть 40 мест.", OFFICE_RU) == []
    assert in_context("Пропуск новому сотруднику выдают за 3 рабочих дня.", OFFICE_RU) == []
    assert in_context("Гостя регистрируют за 24 часа по форме ОФ-2.", OFFICE_RU) == []


def test_codes_and_dates_are_read_in_their_context_too() -> None:
    sources = [LEAVE, "Travel expenses are filed on form TR-310 by 31 March."]
    assert in_context("Leave is requested on form TR-310.", sources[0] + "\n\n" + sources[1]) == [
        ("TR-310", "code")
    ]
    assert unsupported("Travel expenses are filed on form TR-310 by 31 March.", *sources) == []
    assert unsupported("Leave is requested on form HR-204.", *sources) == []


def test_answers_that_quote_their_source_are_never_out_of_context() -> None:
    for source in (LEAVE, OFFICE_RU, TRAVEL, LEAVE_RU):
        body = source.split("\n\n")[-1]
        for sentence in re.split(r"(?<=[.!?])\s+", body):
            for answer in (sentence, f"According to the policy: {sentence}"):
                assert in_context(answer, source) == [], answer


def test_an_answer_in_words_of_its_own_is_not_judged_by_context() -> None:
    # No word around the figure is in any source: nothing says it is about something else.
    assert in_context("Thirty, I believe: 30.", LEAVE) == []
    assert in_context("Three.", LEAVE) == []


def test_a_word_the_sources_use_everywhere_does_not_vouch_for_a_figure() -> None:
    # "leave" is in every sentence of a leave policy; "parental" says which figure is meant.
    source = LEAVE + " Parental leave is 16 weeks at full pay."
    question = "How long is parental leave?"
    assert in_context("The answer is: 30 days.", source, question) == [("30", "number")]
    assert in_context("The answer is: 16 weeks.", source, question) == []
    russian = (
        "Ежегодный отпуск составляет 30 дней. Отпуск по уходу за ребёнком длится 16 недель."
        " Неиспользованный отпуск до 5 дней переносится на следующий год."
    )
    asked = "Сколько длится отпуск по уходу за ребёнком?"
    assert in_context("Ответ: 30 дней.", russian, asked) == [("30", "number")]
    assert in_context("Отпуск по уходу длится 16 недель.", russian, asked) == []
