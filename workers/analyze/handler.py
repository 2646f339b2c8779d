"""Analyze as a handler of the job runner: one analysis through
extract → cut → map → reduce → artifact (``workers.analyze.pipeline``)."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from haven.budget import BudgetExceeded
from haven.db.engine import transaction
from haven.db.repositories import JobStore
from haven.db.tables import Analysis, JobKind
from haven.jobs import Reason
from haven.llm_client import LlmRejected, LlmUnavailable
from workers.analyze import pipeline
from workers.ingest.extract import ExtractionError
from workers.jobs.handler import Claim, JobHandler
from workers.jobs.heartbeat import Heartbeat
from workers.jobs.registry import register
from workers.runtime import WorkerRuntime


class AnalyzeHandler(JobHandler):
    kind = JobKind.ANALYZE
    subject_label = "analysis"

    def begin(self, rt: WorkerRuntime, job_id: uuid.UUID) -> Claim | None:
        with transaction(rt.session_factory) as session:
            job = JobStore(session).claim(job_id, takeover=True, steps=1)
            if job is None:
                return None
            analysis = session.execute(
                select(Analysis).where(
                    Analysis.id == job.subject_id, Analysis.tenant_id == job.tenant_id
                )
            ).scalar_one_or_none()
            if analysis is None:
                return Claim.of(job, gone=True)
            return Claim.of(job, subject=pipeline.Subject.of(analysis))

    def run(self, rt: WorkerRuntime, claim: Claim, beat: Heartbeat) -> None:
        pipeline.AnalyzeRun(rt, claim, beat).run()

    def discard(self, rt: WorkerRuntime, claim: Claim) -> None:
        if claim.subject_id is not None:
            pipeline.discard(rt, claim.tenant_id, claim.subject_id)

    def reason(self, exc: Exception) -> Reason | None:
        if isinstance(exc, pipeline.AnalyzeError):
            return Reason(exc.code, str(exc)[:300], permanent=True)
        if isinstance(exc, ExtractionError):
            code = getattr(exc, "code", None) or "extract.failed"
            return Reason(str(code), str(exc)[:300], permanent=True)
        if isinstance(exc, BudgetExceeded):
            return Reason(
                "budget",
                "the tenant's token budget is spent; a retry after it resets goes on from the "
                "steps already done",
                permanent=True,
            )
        if isinstance(exc, LlmRejected):
            return Reason("llm.rejected", "the generation service refused the analysis's request")
        if isinstance(exc, LlmUnavailable):
            return Reason("llm.unavailable", "the generation service stayed unavailable")
        return None


register(AnalyzeHandler())
