"""Code review as a handler of the job runner: fetch and extract the archives safely → diff →
static analysis → LLM passes (architecture, components, synthesis) → log pass → result, score
and its delivery (outbox) in one transaction, then published.

Nothing is left behind: the job's folder is removed however the run ends.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import select

from haven.archives import ArchiveRejected, Inventory, extract, inspect
from haven.budget import BudgetExceeded
from haven.db.engine import transaction
from haven.db.tables import JobKind, Review
from haven.jobs import Reason
from haven.review_settings import ReviewSettings
from workers.jobs.handler import Claim, JobHandler, finish
from workers.jobs.heartbeat import Heartbeat
from workers.jobs.registry import register
from workers.review import publish
from workers.review.diffing import ChangeSet, diff_trees
from workers.review.linters import StaticReport, analyse
from workers.review.llm import (
    FINDING_FORMAT,
    Coverage,
    LlmBusy,
    LlmFailed,
    LlmSession,
    parse_findings,
    plan,
)
from workers.review.logs import LogReport, group_logs
from workers.review.scoring import RUBRIC, score
from workers.review.tests_run import run_tests
from workers.runtime import WorkerRuntime

log = structlog.get_logger("haven.review")

STEPS = ("fetch", "diff", "static", "llm", "logs", "publish")

ARCHITECTURE_PROMPT = (
    "Summarise the structure of this submission and any architectural concerns in at most "
    "five bullet points.\nChanged files:\n"
)
COMPONENTS_PROMPT = (
    f"Review these changes for bugs, security problems and unclear code. {FINDING_FORMAT}\n\n"
)
SYNTHESIS_PROMPT = (
    "Write a short overall review of this submission for the student: strengths, the most "
    "important problems, what to fix first.\n\n"
)
LOGS_PROMPT = (
    "These error groups come from the submission's run logs. Diagnose the most likely cause "
    "of each and how to fix it.\n\n"
)


@dataclass
class Workspace:
    root: Path
    new: Path
    old: Path | None
    logs: Path | None
    skipped: dict[str, list[dict[str, str]]]


class ReviewRun:
    def __init__(self, rt: WorkerRuntime, claim: Claim, beat: Heartbeat) -> None:
        self.rt = rt
        self.claim = claim
        self.beat = beat
        self.settings = rt.settings.review

    # --- steps ---

    def fetch(self, review: Review, folder: Path) -> Workspace:
        skipped: dict[str, list[dict[str, str]]] = {}
        trees: dict[str, Path | None] = {"new": None, "old": None, "logs": None}
        for part, key in (review.objects or {}).items():
            archive = folder / f"{part}.zip"
            self.rt.s3.fget_object(self.rt.settings.s3_bucket, key, str(archive))
            form_part = f"{part}_zip"
            limits = self.settings.archive_limits(form_part)
            inventory: Inventory = inspect(archive, form_part, limits)
            tree = folder / part
            tree.mkdir()
            written = extract(archive, inventory, tree, limits)
            archive.unlink()
            trees[part] = tree
            skipped[part] = [{"path": s.path, "reason": s.reason} for s in written.skipped]
        if trees["new"] is None:
            raise ArchiveRejected("new_zip", "the submission has no new archive", "archive.missing")
        return Workspace(folder, trees["new"], trees["old"], trees["logs"], skipped)

    def run(self) -> None:
        settings = self.settings
        self.beat(done=0, total=len(STEPS))
        with transaction(self.rt.session_factory) as session:
            review = session.execute(
                select(Review).where(
                    Review.id == self.claim.subject_id, Review.tenant_id == self.claim.tenant_id
                )
            ).scalar_one()
            session.expunge(review)
        folder = Path(tempfile.mkdtemp(prefix="haven-review-"))
        llm = LlmSession(
            base_url=self.rt.settings.llm_url,
            timeout=settings.llm_timeout_seconds,
            retry_seconds=settings.llm_retry_seconds,
            max_wait_seconds=settings.llm_max_wait_seconds,
            checkpoint=lambda: self.beat(),
            budget=self.rt.budget,
            tenant_id=review.tenant_id,
            request_id=str(self.claim.job_id),
        )
        try:
            work = self.fetch(review, folder)
            self.beat(done=1)
            changes = diff_trees(
                work.old,
                work.new,
                before=settings.context_lines_before,
                after=settings.context_lines_after,
            )
            self.beat(done=2)
            static = analyse(
                work.new,
                changes,
                timeout=settings.linter_timeout_seconds,
                memory_mb=settings.linter_memory_mb,
                only_changed_lines=settings.only_changed_lines,
                max_findings=settings.max_findings,
            )
            self.beat(done=3)
            passes = llm_passes(llm, changes, static, settings)
            self.beat(done=4)
            logs = log_pass(llm, work.logs, settings) if work.logs is not None else None
            self.beat(done=5)
            result = self.result(review, work, changes, static, passes, logs, llm)
            with transaction(self.rt.session_factory) as session:
                stored = session.get(Review, review.id)
                assert stored is not None
                stored.result = result
                stored.score = result["overall_score"]
                stored.finished_at = datetime.now(UTC)
                delivery = None
                if settings.publish_url is not None or settings.publish_fallback_url is not None:
                    delivery = publish.enqueue(
                        session, review.tenant_id, review.id, payload(review, result)
                    )
                finish(session, self.claim)
                delivery_id = delivery.id if delivery is not None else None
        finally:
            llm.close()
            shutil.rmtree(folder, ignore_errors=True)
        if delivery_id is not None:
            try:
                publish.deliver_due(self.rt.session_factory, settings, only=delivery_id)
            except Exception as exc:
                log.warning("review.publish_deferred", error=type(exc).__name__)

    def result(
        self,
        review: Review,
        work: Workspace,
        changes: ChangeSet,
        static: StaticReport,
        passes: dict[str, Any],
        logs: dict[str, Any] | None,
        llm: LlmSession,
    ) -> dict[str, Any]:
        coverage: list[Coverage] = passes["coverage"]
        tests = run_tests(work.new, self.rt.settings.sandbox, self.settings.test_limits)
        findings = [f.as_dict() for f in static.findings] + passes["components"]["findings"]
        overall = score(static.findings, passes["components"]["findings"], logs, tests)
        errors = sum(1 for f in static.findings if f.severity == "error")
        warnings = sum(1 for f in static.findings if f.severity == "warning")
        summary = (
            f"{len(changes.files)} changed files; {errors} errors and {warnings} warnings from "
            f"the linters; score {overall} of 5."
        )
        return {
            "overall_score": overall,
            "score_rubric": RUBRIC,
            "summary": summary,
            "pass1_architecture": {"text": passes["architecture"]},
            "pass2_components": passes["components"],
            "pass3_synthesis": {"text": passes["synthesis"]},
            "static_analysis": {
                "tools": static.tools,
                "findings": [f.as_dict() for f in static.findings],
                "dropped_on_unchanged_lines": static.dropped_unchanged,
                "truncated": static.truncated,
                "llm_only_languages": static.languages_llm_only,
            },
            "pass4_logs": logs,
            "findings": findings,
            "coverage": [c.as_dict() for c in coverage],
            "skipped_entries": work.skipped,
            "diff": {
                "files": len(changes.files),
                "added_lines": sum(c.added for c in changes.files),
                "removed_lines": sum(c.removed for c in changes.files),
                "whole_submission_new": changes.whole_submission_new,
            },
            "tests": tests,
            "model": {"name": llm.model, "calls": len(llm.calls)},
            "usage": {
                "prompt_tokens": sum(c.prompt_tokens for c in llm.calls),
                "completion_tokens": sum(c.completion_tokens for c in llm.calls),
                "llm_seconds": round(sum(c.seconds for c in llm.calls), 3),
            },
        }


def llm_passes(
    llm: LlmSession, changes: ChangeSet, static: StaticReport, settings: ReviewSettings
) -> dict[str, Any]:
    """Architecture, components (within the budget) and synthesis."""
    llm.count(["x"])  # the context length and the model's identity
    answer = min(settings.answer_tokens, max(32, llm.context_length // 3))
    known = {c.path for c in changes.files}

    def fits(prompt_head: str) -> int:
        # The rendered prompt (system message and chat template included), exactly.
        return llm.context_length - llm.prompt_tokens(prompt_head) - answer - 8

    # Pass 1: architecture, from the shape of the change.
    tree = (
        "\n".join(f"{c.status:8} {c.path} (+{c.added} -{c.removed})" for c in changes.files)
        or "(no changes)"
    )
    head1 = ARCHITECTURE_PROMPT
    tree = _clip(llm, tree, fits(head1))
    architecture = llm.complete("architecture", head1 + tree, answer)

    # Pass 2: components, within the budget.
    head2 = COMPONENTS_PROMPT
    batches, coverage = plan(changes, llm.count, fits(head2), settings.max_component_calls)
    component_findings: list[dict[str, Any]] = []
    notes: list[str] = []
    for batch in batches:
        text = llm.complete("components", head2 + batch.text, answer)
        found, rest = parse_findings(text, known)
        component_findings += found
        notes += rest
    # Pass 3: synthesis, with the linters' findings.
    lint = (
        "\n".join(
            f"{f.path}:{f.start_line} [{f.source} {f.rule}] {f.message}"
            for f in static.findings[:30]
        )
        or "(none)"
    )
    component_lines = [
        f"{f.get('path')}:{f.get('start_line')} {f['message']}" for f in component_findings[:30]
    ]
    body = "\n".join(
        [
            "Architecture notes:",
            architecture,
            "",
            "Component notes:",
            *component_lines,
            *notes[:20],
            "",
            "Linter findings:",
            lint,
        ]
    )
    head3 = SYNTHESIS_PROMPT
    synthesis = llm.complete("synthesis", head3 + _clip(llm, body, fits(head3)), answer)
    return {
        "architecture": architecture,
        "components": {"findings": component_findings, "notes": notes, "calls": len(batches)},
        "synthesis": synthesis,
        "coverage": coverage,
    }


def log_pass(llm: LlmSession, logs: Path, settings: ReviewSettings) -> dict[str, Any]:
    """Group the run logs; the model diagnoses the top error groups."""
    report: LogReport = group_logs(
        logs,
        max_lines=settings.max_log_lines,
        max_groups=settings.max_log_groups,
        samples=settings.log_samples,
    )
    top = report.top_errors(settings.log_groups_to_llm)
    diagnosis = None
    if top:
        answer = min(settings.answer_tokens, max(32, llm.context_length // 3))
        head = LOGS_PROMPT
        groups = "\n\n".join(
            f"Group {i + 1} ({g.count} times): {g.template}\n"
            f"Sample: {g.samples[0] if g.samples else ''}"
            for i, g in enumerate(top)
        )
        budget = llm.context_length - llm.count([head])[0] - answer - 64
        diagnosis = llm.complete("logs", head + _clip(llm, groups, budget), answer)
    return {
        "files": report.files,
        "lines": report.lines,
        "events": report.events,
        "groups": [g.as_dict() for g in report.groups[:100]],
        "group_count": len(report.groups),
        "truncated": report.truncated,
        "diagnosis": diagnosis,
    }


def _clip(llm: LlmSession, text: str, budget: int) -> str:
    """``text`` cut to ``budget`` tokens (by the model's count), marked when cut."""
    if budget <= 0:
        return "(left out: no room in the model's context)"
    marker = "\n[… cut to fit the model's context]"
    tokens = llm.count([text])[0]
    for _ in range(4):
        if tokens <= budget:
            return text
        text = text[: max(0, int(len(text) * (budget - 16) / tokens * 0.95))]
        tokens = llm.count([text + marker])[0]
        if tokens <= budget:
            return text + marker
    return "(left out: no room in the model's context)"


def payload(review: Review, result: dict[str, Any]) -> dict[str, Any]:
    return {
        "task_id": str(review.id),
        "student_id": review.student_id,
        "assignment_id": review.assignment_id,
        "new_commit": review.new_commit,
        "old_commit": review.old_commit,
        "status": "ready",
        "result": result,
    }


class ReviewHandler(JobHandler):
    kind = JobKind.REVIEW
    steps = len(STEPS)
    subject_label = "review"

    def run(self, rt: WorkerRuntime, claim: Claim, beat: Heartbeat) -> None:
        ReviewRun(rt, claim, beat).run()

    def reason(self, exc: Exception) -> Reason | None:
        if isinstance(exc, ArchiveRejected):
            return Reason(exc.code, exc.message[:300], permanent=True)
        if isinstance(exc, LlmBusy):
            return Reason("llm.busy", "the generation service stayed busy; the review is retried")
        if isinstance(exc, BudgetExceeded):
            return Reason(
                "budget",
                "the tenant's token budget is spent; retry after it resets",
                permanent=True,
            )
        if isinstance(exc, LlmFailed):
            return Reason("llm.failed", str(exc)[:300])
        return None


register(ReviewHandler())
