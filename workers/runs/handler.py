"""Code runs as a handler of the job runner: a submission run in the sandbox, then, when it
failed, explained from the common-error registry or, when no entry matches, by the LLM.

The run's row (``code_runs``) is the job's subject. The sandbox run is one step, bounded by
its own wall limit (at most a minute), so it needs no boundary inside; its result and the
explanation are written with ``finish`` in one transaction. A host where no box can be made
fails the job at once with ``sandbox.unavailable`` and bubblewrap's reason: code is never
run unsandboxed.
"""

from __future__ import annotations

import uuid
from typing import Any

import structlog

from haven.db.engine import transaction
from haven.db.runs import ErrorRegistry
from haven.db.tables import CodeRun, JobKind
from haven.jobs import Reason
from haven.sandbox import SandboxUnavailable
from haven.sandbox.bundle import BadBundle, unpack
from workers.jobs.handler import Claim, JobHandler, finish
from workers.jobs.heartbeat import Heartbeat
from workers.jobs.registry import register
from workers.runs import explain
from workers.runtime import WorkerRuntime

log = structlog.get_logger("haven.runs")


class RunFailed(Exception):
    """The submission cannot be run here (unknown language, unreadable bundle)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RunHandler(JobHandler):
    kind = JobKind.RUN
    steps = 2  # run, explain
    subject_label = "run"

    def run(self, rt: WorkerRuntime, claim: Claim, beat: Heartbeat) -> None:
        beat(done=0)
        with transaction(rt.session_factory) as session:
            row = session.get(CodeRun, claim.subject_id) if claim.subject_id else None
            if row is None or row.tenant_id != claim.tenant_id:
                finish(session, claim)  # the run was deleted (with its tenant): nothing to do
                return
            language_name, bundle, stdin = row.language, row.bundle, row.stdin
            args = list(row.args or [])
        language = rt.settings.sandbox.languages.get(language_name)
        if language is None:
            raise RunFailed("run.language", f"this installation does not run {language_name}")
        try:
            files = unpack(bundle)
        except BadBundle as exc:
            raise RunFailed("run.bundle", str(exc)) from exc
        sandbox = rt.sandbox
        sandbox.require_ready()
        result = sandbox.run_language(language, files, args=args, stdin=stdin)
        beat(done=1)

        report: dict[str, Any] = {"language": language_name, **result.report()}
        explanation: dict[str, Any] | None = None
        if explain.failed(result):
            code = files.get(language.file_name, b"").decode("utf-8", "replace")
            found = explain.signature(result, language)
            with transaction(rt.session_factory) as session:
                registry = ErrorRegistry(session, claim.tenant_id)
                entry = explain.match(
                    registry.candidates(language_name, found.error_type), found, code
                )
                if entry is not None:
                    explanation = explain.from_registry(entry, found)
            if explanation is None:  # outside any transaction: the model may take a while
                explanation = explain.from_llm(
                    rt.settings.llm_url,
                    language_name,
                    code,
                    found,
                    max_tokens=rt.settings.runs_explain_max_tokens,
                    timeout=rt.settings.runs_explain_timeout_seconds,
                )
        report["explanation"] = explanation
        with transaction(rt.session_factory) as session:
            row = session.get(CodeRun, claim.subject_id)
            if row is None:
                finish(session, claim)
                return
            row.result = report
            if explanation is not None and explanation.get("source") == "registry":
                entry_id = uuid.UUID(explanation["entry_id"])
                ErrorRegistry(session, claim.tenant_id).count_hit(entry_id)
            finish(session, claim)
        log.info(
            "runs.finished",
            exit_code=result.exit_code,
            limit_hit=result.limit_hit,
            explanation=explanation and explanation.get("source"),
        )

    def reason(self, exc: Exception) -> Reason | None:
        if isinstance(exc, SandboxUnavailable):
            # Retrying on this host cannot help; the operator sees it on /readyz too.
            return Reason("sandbox.unavailable", str(exc)[:300], permanent=True)
        if isinstance(exc, RunFailed):
            return Reason(exc.code, exc.message[:300], permanent=True)
        return None


register(RunHandler())
