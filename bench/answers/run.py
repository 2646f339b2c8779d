"""The answer check: does the bundled chat model answer questions about uploaded documents?

Starts the real stack (moto S3, a fresh database, emb with MiniLM, llm, the all-in-one API +
worker), publishes every bundled generation model through the registry, uploads the five
documents of ``bench/answers/dataset.py`` (three English, two Russian) and asks each question
in a new chat, once per model (alias ``chat`` moved to it and llm restarted, as an operator
would), with greedy sampling. Reported per model, as shares of the questions:

- **non-empty**: the model said something visible (not the empty-answer notice);
- **fact**: the answer contains the expected fact (the figure, code or name);
- **cites doc**: the answer cites (``[n]``) a passage of the document that holds the fact;
- **ungrounded**: the grounding check marked something in it as in no source; and how many of
  the answers that miss the fact but state a figure or code were marked (a wrong figure that
  goes unmarked is what the check exists to prevent).

    .venv/bin/python -m bench.answers.run [--models smollm2-135m-instruct-q4-1,...]
        [--max-tokens 96] [--ctx 4096] [--threads 2] [--no-record]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from api.chat.grounding import NOT_IN_SOURCES
from bench.answers.dataset import DOCUMENTS, QUESTIONS, Question, contains_fact
from bench.common import machine, record
from haven.db.engine import make_engine, make_session_factory
from models.defaults import BUNDLED_LLMS, DEFAULT_LLM_ALIAS, publish_bundled_llm
from models.registry import ModelRegistry
from models.store import registry_from_settings
from tests.e2e.conftest import Stack
from tests.e2e.helpers import upload, wait_job
from tests.fixtures.api import Account, bootstrap_platform_admin, create_tenant_with_admin
from tests.fixtures.rag_stack import rag_stack
from tests.fixtures.services import drop_database, migrated_database, start_moto

_FIGURE = re.compile(r"\d")


@dataclass(frozen=True)
class Answer:
    question: Question
    content: str
    finish_reason: str
    cited_documents: frozenset[str]
    # How the citations were decided: "marker" ([n] in the answer) or "overlap".
    cited_by: frozenset[str]
    grounded: bool | None
    unsupported: list[dict[str, Any]]
    seconds: float
    sources: list[dict[str, Any]]

    @property
    def non_empty(self) -> bool:
        return self.finish_reason != "empty"

    @property
    def has_fact(self) -> bool:
        return self.non_empty and contains_fact(self.content, self.question)

    @property
    def wrong_figure(self) -> bool:
        """States a figure or code, but not the expected one."""
        return self.non_empty and not self.has_fact and bool(_FIGURE.search(self.content))

    @property
    def in_context(self) -> bool:
        """Marked for a figure the sources hold only about something else."""
        return any(
            span.get("reason", NOT_IN_SOURCES) != NOT_IN_SOURCES for span in self.unsupported
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "question": self.question.text,
            "document": self.question.document,
            "expected": list(self.question.expected),
            "content": self.content,
            "finish_reason": self.finish_reason,
            "has_fact": self.has_fact,
            "cited_documents": sorted(self.cited_documents),
            "cited_by": sorted(self.cited_by),
            "grounded": self.grounded,
            "unsupported": self.unsupported,
            "sources": self.sources,
        }


def publish_all(registry: ModelRegistry) -> None:
    for model in BUNDLED_LLMS:
        publish_bundled_llm(registry, model)
    first = BUNDLED_LLMS[0]
    registry.set_alias(DEFAULT_LLM_ALIAS, first.name, first.version)


def upload_documents(stack: Stack, owner: Account) -> dict[str, str]:
    ids: dict[str, str] = {}
    for name, text in DOCUMENTS.items():
        body = upload(stack, owner, name, text.encode(), source_id=name)
        wait_job(stack, owner, body["job_id"], {"ready"}, timeout=300)
        ids[name] = body["document"]["id"]
    return ids


def ask_all(
    stack: Stack, owner: Account, document_ids: dict[str, str], max_tokens: int
) -> list[Answer]:
    answers = []
    for question in QUESTIONS:
        chat = stack.client.post("/api/v1/chats", json={}, headers=owner.headers).json()["id"]
        started = time.perf_counter()
        response = stack.client.post(
            f"/api/v1/chats/{chat}/messages",
            json={"content": question.text, "max_tokens": max_tokens, "temperature": 0},
            headers={**owner.headers, "Accept": "application/json"},
        )
        seconds = time.perf_counter() - started
        response.raise_for_status()
        body = response.json()
        names = {v: k for k, v in document_ids.items()}
        answers.append(
            Answer(
                question=question,
                content=body["content"],
                finish_reason=body["finish_reason"],
                cited_documents=frozenset(
                    names.get(c["document_id"], "?") for c in body["citations"] if c["cited"]
                ),
                cited_by=frozenset(
                    c.get("cited_by") or "" for c in body["citations"] if c["cited"]
                ),
                grounded=body.get("grounded"),
                unsupported=body.get("unsupported", []),
                seconds=seconds,
                sources=[
                    {
                        "document": names.get(s["document_id"], "?"),
                        "title": s["title"],
                        "heading": s["heading"],
                        "text": s["text"],
                    }
                    for s in body["sources"]
                ],
            )
        )
        mark = "✓" if answers[-1].has_fact else "✗"
        print(f"  {mark} {question.text[:60]!r} → {body['content'][:120]!r}", flush=True)
    return answers


def share(answers: list[Answer], predicate: Any) -> str:
    hits = sum(1 for a in answers if predicate(a))
    return f"{hits}/{len(answers)} ({100 * hits / len(answers):.0f} %)"


def summary(name: str, answers: list[Answer]) -> str:
    wrong = [a for a in answers if a.wrong_figure]
    flagged = sum(1 for a in wrong if a.grounded is False)
    by_context = sum(1 for a in wrong if a.in_context)
    right = [a for a in answers if a.has_fact]
    times = sorted(a.seconds for a in answers)
    return (
        f"- `{name}`: non-empty **{share(answers, lambda a: a.non_empty)}**, "
        f"fact **{share(answers, lambda a: a.has_fact)}**, "
        f"cites the right document **"
        f"{share(answers, lambda a: a.question.document in a.cited_documents)}** "
        f"(by `[n]` {share(answers, lambda a: 'marker' in a.cited_by)}, by overlap "
        f"{share(answers, lambda a: 'overlap' in a.cited_by)}; cites a wrong document "
        f"{share(answers, lambda a: bool(a.cited_documents - {a.question.document}))}), "
        f"marked ungrounded {share(answers, lambda a: a.grounded is False)}; "
        f"answers with a wrong figure or code: {len(wrong)}, of which marked ungrounded "
        f"**{flagged}/{len(wrong)}** ({by_context} for a figure out of its context); "
        f"answers with the fact marked ungrounded: "
        f"{sum(1 for a in right if a.grounded is False)}/{len(right)}; "
        f"seconds per answer: median {times[len(times) // 2]:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(m.name for m in BUNDLED_LLMS))
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument(
        "--dump",
        type=Path,
        help="write every answer with its sources here (JSON), for"
        " `python -m bench.answers.context`",
    )
    args = parser.parse_args()
    wanted = args.models.split(",")

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="haven-bench-answers-"))
    moto = start_moto(work)
    s3 = next(moto)
    database_name = f"haven_bench_answers_{os.getpid()}"
    database_url = migrated_database(database_name)
    results: dict[str, list[Answer]] = {}
    try:
        with rag_stack(
            database_url,
            s3,
            work,
            publish_all,
            HAVEN_LLM_CTX=str(args.ctx),
            HAVEN_LLM_THREADS=str(args.threads),
            HAVEN_LLM_QUEUE="4",
            HAVEN_ANSWER_CACHE_TTL_SECONDS="0",
            HAVEN_LOG_LEVEL="WARNING",
        ) as stack:
            engine = make_engine(stack.settings)
            admin = bootstrap_platform_admin(make_session_factory(engine), stack.client)
            owner = create_tenant_with_admin(stack.client, admin)
            document_ids = upload_documents(stack, owner)
            registry = registry_from_settings(stack.settings)
            for model in BUNDLED_LLMS:
                if model.name not in wanted:
                    continue
                registry.set_alias(DEFAULT_LLM_ALIAS, model.name, model.version)
                stack.llm.stop()
                stack.llm.start(timeout=300)
                print(f"{model.name} {model.version}:", flush=True)
                results[model.name] = ask_all(stack, owner, document_ids, args.max_tokens)
            engine.dispose()
    finally:
        drop_database(database_name)
        next(moto, None)
        shutil.rmtree(work, ignore_errors=True)

    english = sum(1 for q in QUESTIONS if not re.search(r"[а-яё]", q.text, re.I))
    report = "\n".join(
        [
            f"## answers — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            f"machine: {machine()}; load average (1, 5, 15 min) at the start"
            f" {' / '.join(f'{x:.1f}' for x in load_before)}, at the end"
            f" {' / '.join(f'{x:.1f}' for x in os.getloadavg())}",
            f"command: `.venv/bin/python -m bench.answers.run --max-tokens {args.max_tokens}"
            f" --ctx {args.ctx} --threads {args.threads}`",
            f"- {len(QUESTIONS)} questions ({english} English, {len(QUESTIONS) - english}"
            f" Russian) over {len(DOCUMENTS)} short policy documents, one new chat each,"
            f" temperature 0, at most {args.max_tokens} answer tokens, context {args.ctx}",
            *(summary(name, answers) for name, answers in results.items()),
            "",
        ]
    )
    if args.dump is not None:
        args.dump.parent.mkdir(parents=True, exist_ok=True)
        args.dump.write_text(
            json.dumps(
                {name: [a.as_json() for a in answers] for name, answers in results.items()},
                ensure_ascii=False,
                indent=1,
            ),
            encoding="utf-8",
        )
    record(report, save=not args.no_record)


if __name__ == "__main__":
    main()
