"""Ingest as a handler of the job runner: one document version through
download → extract → chunk → embed → activate (``workers.ingest.pipeline``)."""

from __future__ import annotations

import uuid

from haven.db.tables import DocumentState, JobKind, JobState
from haven.emb_client import EmbeddingRejected, EmbeddingUnavailable
from haven.jobs import Reason
from workers.ingest import pipeline
from workers.ingest.extract import ExtractionError
from workers.jobs.handler import Claim, JobHandler
from workers.jobs.heartbeat import Heartbeat
from workers.jobs.registry import register
from workers.runtime import WorkerRuntime

_DOCUMENT_STATE = {JobState.FAILED: DocumentState.FAILED, JobState.CANCELED: DocumentState.CANCELED}


class IngestHandler(JobHandler):
    kind = JobKind.INGEST
    steps = len(pipeline.STEPS)
    subject_label = "document"

    def begin(self, rt: WorkerRuntime, job_id: uuid.UUID) -> Claim | None:
        # The claim, the version's and the document's states and what the run reads: one
        # prebuilt statement (a round trip per document counts at thousands a minute).
        return pipeline.begin(rt, job_id)

    def run(self, rt: WorkerRuntime, claim: Claim, beat: Heartbeat) -> None:
        pipeline.IngestRun(rt, claim, beat).run()

    def discard(self, rt: WorkerRuntime, claim: Claim) -> None:
        if claim.subject_id is not None:
            pipeline.discard(rt, claim.tenant_id, claim.subject_id)

    def ended(self, rt: WorkerRuntime, claim: Claim, state: JobState) -> None:
        if claim.subject_id is not None and state in _DOCUMENT_STATE:
            pipeline.mark_version(rt, claim.tenant_id, claim.subject_id, _DOCUMENT_STATE[state])

    def reason(self, exc: Exception) -> Reason | None:
        if isinstance(exc, ExtractionError):
            # The document itself is the problem: retrying cannot help. Its message is
            # written for people (``corrupt PDF: ...``).
            code = getattr(exc, "code", None) or "extract.failed"
            return Reason(str(code), str(exc)[:300], permanent=True)
        if isinstance(exc, EmbeddingRejected):
            return Reason(
                "emb.rejected", "the embedding service refused the document's text", permanent=True
            )
        if isinstance(exc, EmbeddingUnavailable):
            return Reason("emb.unavailable", "the embedding service is unavailable")
        return None


register(IngestHandler())
