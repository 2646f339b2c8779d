"""How well the grounding check's figure-in-context rule does, without running a model.

- **held out**: the answers of ``bench/answers/heldout.py`` (written apart from the question
  set): wrong figures marked, right answers marked (false positives), and which rule marked
  them (a figure in no source, in another unit, or out of its context);
- **quoted**: every sentence holding a figure of the question set's documents and of the held
  out ones, as an answer, alone and after a lead-in: any mark is a false positive;
- **bare**: the right fact of every question of the question set as a bare answer, checked
  against all five documents with the question as its context: any mark is a false positive;
- **dump** (``--dump`` of ``bench.answers.run``): the answers a model gave, checked again with
  the current code against the sources they were given: wrong figures marked, answers with the
  fact marked, and the right document attributed by overlap.

    .venv/bin/python -m bench.answers.context [--dump bench/out/answers.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from api.chat import grounding
from api.chat.grounding import NOT_IN_SOURCES, Grounding, attribute, check
from bench.answers import dataset, heldout

_LEAD_INS = {"en": "According to the policy, ", "ru": "Согласно положению, "}


def _reasons(result: Grounding) -> list[str]:
    return [
        "context" if s.reason != NOT_IN_SOURCES else "no source"
        for s in result.unsupported
        if s.kind in ("number", "date", "code")
    ]


def held_out() -> list[str]:
    names = list(heldout.DOCUMENTS)
    wrong = right = wrong_marked = right_marked = 0
    lines = []
    for case in heldout.CASES:
        other = names[(names.index(case.document) + 1) % len(names)]
        sources = [heldout.DOCUMENTS[case.document], heldout.DOCUMENTS[other]]
        result = check(case.answer, sources, case.question)
        reasons = _reasons(result)
        if case.right:
            right += 1
            right_marked += bool(reasons)
        else:
            wrong += 1
            wrong_marked += bool(reasons)
        if bool(reasons) == case.right:
            lines.append(f"    {'FP' if case.right else 'FN'}: {case.answer!r} → {reasons}")
    return [
        f"held out: wrong figures marked {wrong_marked}/{wrong}, right answers marked "
        f"{right_marked}/{right}",
        *lines,
    ]


def quoted() -> list[str]:
    total = marked = 0
    lines = []
    documents = {**dataset.DOCUMENTS, **heldout.DOCUMENTS}
    for text in documents.values():
        language = "ru" if any("а" <= c <= "я" for c in text.casefold()) else "en"
        for start, end in grounding._sentence_spans(text):
            sentence = " ".join(text[start:end].split())
            if not any(c.isdigit() for c in sentence) or sentence.startswith("#"):
                continue
            for answer in (sentence, _LEAD_INS[language] + sentence[0].lower() + sentence[1:]):
                total += 1
                reasons = _reasons(check(answer, [text]))
                if reasons:
                    marked += 1
                    lines.append(f"    FP: {answer!r} → {reasons}")
    return [f"quoted sentences marked: {marked}/{total}", *lines]


def terse() -> list[str]:
    """The right fact of every question of the question set, as a bare answer ("The answer
    is: 30.") whose context is the question alone."""
    marked = 0
    lines = []
    for question in dataset.QUESTIONS:
        russian = any("а" <= c <= "я" for c in question.text.casefold())
        answer = f"{'Ответ' if russian else 'The answer is'}: {question.expected[0]}."
        reasons = _reasons(check(answer, list(dataset.DOCUMENTS.values()), question.text))
        if reasons:
            marked += 1
            lines.append(f"    FP: {question.text!r} {answer!r} → {reasons}")
    return [f"bare right answers marked: {marked}/{len(dataset.QUESTIONS)}", *lines]


def dumped(path: Path) -> list[str]:
    lines = []
    runs: dict[str, list[dict[str, Any]]] = json.loads(path.read_text(encoding="utf-8"))
    for model, answers in runs.items():
        wrong = [a for a in answers if _wrong(a)]
        right = [a for a in answers if a["has_fact"]]
        marked_wrong = marked_right = cites = 0
        details = []
        for answer in answers:
            material = [
                part
                for s in answer["sources"]
                for part in (s["text"], s["title"] or "", s["heading"] or "")
                if part
            ]
            result = check(answer["content"], material, answer["question"])
            reasons = _reasons(result)
            if answer in wrong:
                marked_wrong += result.grounded is False
            if answer in right and "context" in reasons:
                marked_right += 1
                details.append(f"    FP: {answer['content'][:100]!r} → {reasons}")
            if answer in wrong and result.grounded is not False:
                details.append(f"    FN: {answer['question'][:50]!r} {answer['content'][:90]!r}")
            joined = [
                " ".join(p for p in (s["title"], s["heading"], s["text"]) if p)
                for s in answer["sources"]
            ]
            drawn = {answer["sources"][i]["document"] for i in attribute(answer["content"], joined)}
            cites += answer["document"] in drawn
        lines += [
            f"{model}: wrong figures marked {marked_wrong}/{len(wrong)}, answers with the fact "
            f"marked for a figure out of context {marked_right}/{len(right)}, right document"
            f" attributed by "
            f"overlap {cites}/{len(answers)}",
            *details,
        ]
    return lines


def _wrong(answer: dict[str, Any]) -> bool:
    return (
        answer["finish_reason"] != "empty"
        and not answer["has_fact"]
        and any(c.isdigit() for c in answer["content"])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dump", type=Path)
    args = parser.parse_args()
    report = held_out() + quoted() + terse()
    if args.dump is not None:
        report += dumped(args.dump)
    print("\n".join(report))


if __name__ == "__main__":
    main()
