"""How an answer ends: the operator's cap on its length, the notice that replaces an empty
answer, citations of every source offered and the grounding check, and a prompt that offers
small models fewer, shorter passages with the question last."""

from __future__ import annotations

import uuid
from dataclasses import replace

from api.chat.answer import PreparedAnswer, answer_budget, finish, visible
from api.chat.prompt import Passage, by_question_terms, passage_limits, shorten, user_content
from api.chat.schemas import CITATION_TEXT_CHARS, Citation, Source, UsageRead
from haven.llm_client import Sampling

USAGE = UsageRead(prompt_tokens=100, completion_tokens=7, total_tokens=107)


def source(n: int, text: str, title: str) -> Source:
    return Source(
        n=n,
        chunk_id=uuid.uuid4(),
        document_id=uuid.uuid4(),
        title=title,
        version=1,
        page=n,
        heading=None,
        score=1.0 / n,
        text=text,
    )


def prepared(*sources: Source, rag: bool = True) -> PreparedAnswer:
    return PreparedAnswer(
        sources=list(sources),
        messages=[],
        sampling=Sampling(max_tokens=64, temperature=0.0),
        model="chat:1",
        cache_key=None,
        cached=None,
        reason=None,
        rag=rag,
    )


HOTELS = source(1, "Hotel rooms in Zurich are capped at 250 CHF per night.", "Travel policy")
LEAVE = source(2, "Annual leave is 30 working days.", "Leave policy")
RUSSIAN = source(3, "На парковке у офиса 40 мест для сотрудников.", "Правила офиса")


def test_a_request_never_gets_more_answer_tokens_than_the_operator_allows() -> None:
    assert answer_budget(100_000, cap=512, room=4000) == 512
    assert answer_budget(None, cap=512, room=4000) == 512
    assert answer_budget(40, cap=512, room=4000) == 40
    assert answer_budget(100_000, cap=512, room=300) == 300  # the context is the other bound
    # An answer as long as the context allows would push every passage out of the prompt
    # (and the answer would come without sources): the best passage keeps its room.
    assert answer_budget(100_000, cap=100_000, room=4000, reserve=250) == 3750
    assert answer_budget(100_000, cap=100_000, room=300, reserve=295) == 16


def test_an_answer_with_no_visible_text_ends_empty_with_a_notice_naming_the_sources() -> None:
    for said in ("", "  \n ", "<|im_start|>\n", "<end_of_turn>"):
        assert not visible(said)
        done = finish(said, "stop", USAGE, prepared(HOTELS, LEAVE), cached=False)
        assert done.finish_reason == "empty"
        assert done.notice is not None and done.text == done.notice
        assert "The model gave no answer" in done.text
        assert "[1] Travel policy, page 1" in done.text and "[2] Leave policy, page 2" in done.text
        assert [(c.n, c.cited) for c in done.citations] == [(1, False), (2, False)]
    without = finish("", "stop", USAGE, prepared(), cached=False)
    assert "No passage of the documents matched it" in without.text


def test_citations_list_every_source_offered_and_the_answer_is_checked_against_them() -> None:
    quoted = finish("Zurich hotels: 250 CHF [1].", "stop", USAGE, prepared(HOTELS, LEAVE), False)
    assert quoted.finish_reason == "stop" and quoted.notice is None
    assert [(c.n, c.cited, c.cited_by) for c in quoted.citations] == [
        (1, True, "marker"),
        (2, False, None),
    ]
    assert quoted.grounded is True and quoted.unsupported == []

    invented = finish("Zurich hotels: 320 CHF [1].", "length", USAGE, prepared(HOTELS), False)
    assert invented.finish_reason == "length"
    assert invented.grounded is False
    assert [(s["text"], s["kind"]) for s in invented.unsupported] == [("320", "number")]

    # Without the documents there is nothing to check against.
    plain = finish("Paris is 2,100 km away.", "stop", USAGE, prepared(rag=False), False)
    assert plain.grounded is None and plain.unsupported == []


def test_small_contexts_get_fewer_shorter_passages_and_the_question_comes_last() -> None:
    small, medium, large = passage_limits(4096), passage_limits(8192), passage_limits(32768)
    assert small.count < medium.count < large.count
    assert small.tokens is not None and medium.tokens is not None and large.tokens is None
    assert small.tokens < medium.tokens

    text = "First sentence here. Second sentence is longer than the first. Third one ends it."
    cut, tokens = shorten(text, tokens=20, limit=16)
    assert cut == "First sentence here. Second sentence is longer than the first. …"
    assert tokens == 16
    assert shorten(text, tokens=20, limit=40) == (text, 20)

    content = user_content("How long is leave?", ["[1] (Leave policy)\n30 days"], rag=True)
    assert content.index("[1] (Leave policy)") < content.index("Question:")
    assert content.endswith("Question: How long is leave?")


def test_a_small_model_sees_first_the_passage_holding_the_questions_terms() -> None:
    def passage(text: str) -> Passage:
        return Passage("c", "d", None, None, None, None, 1.0, text)

    english = [
        passage("Hotel rooms in Zurich are capped at 250 CHF."),
        passage("Parental leave is 16 weeks at full pay."),
        passage("Leave is requested on form HR-204."),
    ]
    assert by_question_terms("How long is parental leave?", english) == [1, 2, 0]
    russian = [
        passage("Офис открыт с 8:00 до 20:00."),
        passage("На парковке у здания 40 мест для сотрудников."),
    ]
    assert by_question_terms("Сколько мест на парковке?", russian) == [1, 0]
    # Nothing to go by: retrieval's order stands.
    assert by_question_terms("и что?", russian) == [0, 1]


def test_an_answer_without_markers_cites_the_passages_it_draws_on_and_says_so() -> None:
    sources = prepared(HOTELS, LEAVE, RUSSIAN)

    def cited(answer: str) -> list[tuple[int, bool, str | None]]:
        done = finish(answer, "stop", USAGE, sources, cached=False)
        return [(c.n, c.cited, c.cited_by) for c in done.citations]

    assert cited("The hotel cap in Zurich is 250 CHF per night.") == [
        (1, True, "overlap"),
        (2, False, None),
        (3, False, None),
    ]
    # One sentence from each: both are cited; a bare figure names its passage.
    assert cited("Rooms in Zurich: 250 CHF. Annual leave is 30 working days.") == [
        (1, True, "overlap"),
        (2, True, "overlap"),
        (3, False, None),
    ]
    assert cited("The answer is: 30.") == [(1, False, None), (2, True, "overlap"), (3, False, None)]
    assert cited("На парковке 40 мест.") == [
        (1, False, None),
        (2, False, None),
        (3, True, "overlap"),
    ]
    # Nothing of any passage in it, or as much of one as of another: nothing is cited.
    assert cited("I do not know.") == [(1, False, None), (2, False, None), (3, False, None)]
    assert cited("See the policy.") == [(1, False, None), (2, False, None), (3, False, None)]
    # Markers, when the model writes them, are what counts.
    assert cited("Annual leave is 30 working days [1].") == [
        (1, True, "marker"),
        (2, False, None),
        (3, False, None),
    ]


def test_the_question_tells_a_figure_copied_from_the_wrong_sentence() -> None:
    leave = source(
        1,
        "Annual leave is 30 working days. A sick note is needed after 3 days of illness.",
        "Leave policy",
    )
    asked = replace(prepared(leave), question="How many days of annual leave do I get?")
    wrong = finish("The answer is: 3 days.", "stop", USAGE, asked, cached=False)
    assert wrong.grounded is False
    assert [(s["text"], s["kind"]) for s in wrong.unsupported] == [("3", "number")]
    assert "sick note" in wrong.unsupported[0]["reason"]
    right = finish("The answer is: 30 days.", "stop", USAGE, asked, cached=False)
    assert right.grounded is True


def test_every_citation_quotes_its_passage_as_the_model_saw_it_up_to_a_cap() -> None:
    long = source(2, "Shelf seven holds the binders. " * 100, "Archive")
    done = finish("Zurich hotels: 250 CHF [1].", "stop", USAGE, prepared(HOTELS, long), False)
    short, cut = done.citations
    assert (short.text, short.text_truncated) == (HOTELS.text, False)
    assert short.title == "Travel policy" and short.page == 1 and short.version == 1
    assert cut.text is not None and len(cut.text) == CITATION_TEXT_CHARS
    assert long.text.startswith(cut.text) and cut.text_truncated is True
    # An empty answer's citations quote their passages too.
    empty = finish("  ", "stop", USAGE, prepared(HOTELS), False)
    assert empty.citations[0].text == HOTELS.text
    # A citation stored before passages were kept still reads, without a text.
    old = {k: v for k, v in short.model_dump(mode="json").items() if k in OLD_CITATION_FIELDS}
    assert Citation.model_validate(old).text is None


OLD_CITATION_FIELDS = {"n", "chunk_id", "document_id", "title", "version", "page", "cited"}
