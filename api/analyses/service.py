"""Analyses as tenants ask for them: create (or find the same one), read, delete, download.

An analysis reads the version each document serves when it is asked for; the request and
those versions make its ``request_key``, so the same request again returns the analysis
already made (or running) instead of generating again, unless ``force``. Whether it is
stale (a source deleted, or serving a newer version) is worked out when it is read.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from jsonschema import exceptions as schema_errors
from jsonschema import validators
from minio import Minio
from sqlalchemy.orm import Session

from api.analyses.schemas import AnalysisCreate, AnalysisRead, SourceRead
from api.jobs.schemas import JobRead
from api.outbox import JobOutbox
from api.settings import ApiSettings
from haven.auth.principal import Principal
from haven.db.repositories import AnalysisRepository, AuditLog, DocumentRepository, JobRepository
from haven.db.tables import Analysis, AnalysisKind, Document, DocumentState, Job, JobKind, JobState
from haven.errors import Conflict, Invalid, NotFound, TooLarge
from haven.queueing import task_for
from haven.storage import Presigner, tenant_key


@dataclass(frozen=True)
class Analyses:
    session: Session
    principal: Principal
    outbox: JobOutbox
    s3: Minio
    presigner: Presigner
    settings: ApiSettings
    request_id: str | None

    @property
    def repo(self) -> AnalysisRepository:
        return AnalysisRepository(self.session, self.principal)


@dataclass(frozen=True)
class Created:
    analysis: Analysis
    job: Job | None
    reused: bool


def check_schema(schema: dict[str, Any], max_bytes: int) -> None:
    """A JSON Schema the worker can validate against, offline: 422 otherwise (413 when
    larger than the limit)."""
    text = json.dumps(schema)
    if len(text.encode()) > max_bytes:
        raise TooLarge(
            f"the output schema is larger than {max_bytes} bytes",
            limit=max_bytes,
            code="analysis.schema_too_large",
        )
    if "\\u0000" in text:
        raise Invalid("the output schema must not contain NUL characters", code="analysis.schema")
    try:
        validators.validator_for(schema)(schema).check_schema(schema)
    except schema_errors.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        detail = f"at /{where}: {exc.message}" if where else exc.message
        raise Invalid(
            f"output is not a valid JSON Schema: {detail[:300]}", code="analysis.schema"
        ) from exc
    _local_refs_only(schema)


def _local_refs_only(node: Any) -> None:
    """Haven is offline: a ``$ref`` may only point inside the schema itself."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            raise Invalid(
                f"output's $ref {ref[:100]!r} points outside the schema; only local references "
                "(#/...) can be resolved",
                code="analysis.schema",
            )
        for value in node.values():
            _local_refs_only(value)
    elif isinstance(node, list):
        for value in node:
            _local_refs_only(value)


def _documents(ctx: Analyses, body: AnalysisCreate) -> list[Document]:
    """The requested documents, in order, each once; 404 for any this tenant does not have."""
    documents = DocumentRepository(ctx.session, ctx.principal)
    found: list[Document] = []
    if body.document_ids:
        for document_id in dict.fromkeys(body.document_ids):
            found.append(documents.require(document_id))
    else:
        wanted = list(dict.fromkeys(body.source_ids or []))
        by_source = ctx.repo.documents_by_source_ids(wanted)
        for source_id in wanted:
            if source_id not in by_source:
                raise NotFound("document with source id", source_id)
            found.append(by_source[source_id])
    return found


def request_key(body: AnalysisCreate, sources: list[dict[str, Any]]) -> str:
    what = {
        "kind": body.kind.value,
        "instructions": body.instructions,
        "output": body.output,
        "sources": [(s["document_id"], s["version"], s["content_sha256"]) for s in sources],
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def create(ctx: Analyses, body: AnalysisCreate) -> Created:
    settings = ctx.settings
    references = len(body.document_ids or body.source_ids or [])
    if references > settings.analyze_max_documents:
        raise TooLarge(
            f"an analysis reads at most {settings.analyze_max_documents} documents",
            limit=settings.analyze_max_documents,
            code="analysis.too_many_documents",
        )
    if body.output is not None:
        check_schema(body.output, settings.analyze_max_schema_bytes)
    repo = ctx.repo
    sources: list[dict[str, Any]] = []
    version_ids: list[uuid.UUID] = []
    for document in _documents(ctx, body):
        if document.state != DocumentState.READY or document.current_version is None:
            raise Conflict(
                f"document {document.id} is {document.state.value}, not ready",
                code="document.not_ready",
                document_id=str(document.id),
                state=document.state.value,
            )
        version = repo.version(document.id, document.current_version)
        if version is None:
            raise NotFound("version", document.current_version)
        version_ids.append(version.id)
        sources.append(
            {
                "document_id": str(document.id),
                "version": version.version,
                "version_id": str(version.id),
                "content_sha256": version.content_sha256,
                "title": document.title,
                "mime": document.mime,
                "object_key": version.object_key,
            }
        )
    estimate = repo.chunk_tokens(version_ids)
    if estimate > settings.analyze_max_input_tokens:
        raise TooLarge(
            f"the documents hold about {estimate} tokens; an analysis reads at most "
            f"{settings.analyze_max_input_tokens}",
            limit=settings.analyze_max_input_tokens,
            code="analysis.too_many_tokens",
        )
    key = request_key(body, sources)
    if not body.force:
        existing = repo.reusable(key)
        if existing is not None:
            job = repo.jobs([existing.job_id]).get(existing.job_id) if existing.job_id else None
            return Created(existing, job, reused=True)
    user_id = ctx.principal.subject_id if ctx.principal.kind == "user" else None
    analysis = repo.add(
        Analysis(
            id=uuid.uuid4(),
            created_by=user_id,
            kind=body.kind,
            instructions=body.instructions,
            output_schema=body.output,
            sources=sources,
            document_ids=[uuid.UUID(s["document_id"]) for s in sources],
            request_key=key,
            force=body.force,
            phase="queued",
        )
    )
    job = JobRepository(ctx.session, ctx.principal).add(
        Job(
            kind=JobKind.ANALYZE,
            state=JobState.QUEUED,
            subject_id=analysis.id,
            idempotency_key=f"{ctx.principal.tenant_id}:{analysis.id}:analyze",
            params={"analysis_id": str(analysis.id), "kind": body.kind.value},
            max_attempts=settings.job_max_attempts,
        )
    )
    analysis.job_id = job.id
    ctx.session.flush()
    ctx.outbox.add(task_for(JobKind.ANALYZE.value), job.id)
    AuditLog(ctx.session, ctx.principal, ctx.request_id).record(
        "analysis.create",
        target_type="analysis",
        target_id=analysis.id,
        tenant_id=ctx.principal.tenant_id,
        kind=body.kind.value,
        documents=len(sources),
        force=body.force,
    )
    return Created(analysis, job, reused=False)


# --- reading -----------------------------------------------------------------------------------


def _progress(analysis: Analysis, job: Job | None) -> str | None:
    if job is None:
        return None
    if job.state == JobState.READY:
        return "done"
    if job.state in (JobState.FAILED, JobState.CANCELED):
        return job.state.value
    phase = analysis.phase or "queued"
    if phase in ("map", "reduce"):
        return f"{phase} {job.progress_done}/{job.progress_total}"
    return phase


def _stale(analysis: Analysis, current: dict[uuid.UUID, int | None]) -> list[str]:
    reasons = []
    for source in analysis.sources:
        document_id = uuid.UUID(source["document_id"])
        if document_id not in current:
            reasons.append(f"document {document_id} was deleted")
        elif current[document_id] != source["version"]:
            reasons.append(
                f"document {document_id} serves version {current[document_id]}; "
                f"version {source['version']} was analysed"
            )
    return reasons


def reads(ctx: Analyses, rows: Sequence[Analysis], *, reused: bool = False) -> list[AnalysisRead]:
    repo = ctx.repo
    jobs = repo.jobs([a.job_id for a in rows if a.job_id is not None])
    current = repo.current_versions(list({d for a in rows for d in a.document_ids}))
    out = []
    for analysis in rows:
        job = jobs.get(analysis.job_id) if analysis.job_id else None
        reasons = _stale(analysis, current)
        ready = job is not None and job.state == JobState.READY
        out.append(
            AnalysisRead(
                id=analysis.id,
                kind=analysis.kind,
                state=job.state if job else None,
                progress=_progress(analysis, job),
                phase=analysis.phase,
                instructions=analysis.instructions,
                output=analysis.output_schema,
                force=analysis.force,
                sources=[
                    SourceRead(
                        document_id=uuid.UUID(s["document_id"]),
                        version=s["version"],
                        title=s["title"],
                        content_sha256=s["content_sha256"],
                    )
                    for s in analysis.sources
                ],
                stale=bool(reasons),
                stale_reasons=reasons,
                result=dict(analysis.result) if ready else None,
                model=dict(analysis.model),
                has_markdown=ready and analysis.artifact_key is not None,
                has_json=ready and analysis.artifact_json_key is not None,
                llm_calls=analysis.llm_calls,
                error=job.last_error if job else None,
                error_message=job.last_error_message if job else None,
                job=JobRead.model_validate(job) if job else None,
                reused=reused,
                created_at=analysis.created_at,
                updated_at=analysis.updated_at,
            )
        )
    return out


def read(ctx: Analyses, analysis: Analysis, *, reused: bool = False) -> AnalysisRead:
    return reads(ctx, [analysis], reused=reused)[0]


def download_url(ctx: Analyses, analysis_id: uuid.UUID, fmt: str) -> tuple[str, datetime]:
    """A short-lived link to the artifact, for this tenant's analysis only."""
    analysis = ctx.repo.require(analysis_id)
    job = ctx.repo.jobs([analysis.job_id]).get(analysis.job_id) if analysis.job_id else None
    if job is None or job.state != JobState.READY:
        state = job.state.value if job else "gone"
        raise Conflict(
            f"the analysis is {state}; its artifact exists once it is ready",
            code="analysis.not_ready",
            state=state,
        )
    key = analysis.artifact_json_key if fmt == "json" else analysis.artifact_key
    if key is None:
        raise NotFound(f"{fmt} artifact")
    # The key is the tenant's, whatever the row says.
    if not key.startswith(tenant_key(ctx.principal.tenant_id, "analyses")):
        raise NotFound(f"{fmt} artifact")
    ttl = timedelta(seconds=ctx.settings.download_ttl_seconds)
    extension, mime = ("json", "application/json") if fmt == "json" else ("md", "text/markdown")
    url = ctx.presigner.get_url(
        ctx.settings.s3_bucket,
        key,
        ttl,
        {
            "response-content-type": f"{mime}; charset=utf-8",
            "response-content-disposition": (
                f'attachment; filename="analysis-{analysis.id}.{extension}"'
            ),
        },
    )
    return url, datetime.now(UTC) + ttl


def delete(ctx: Analyses, analysis_id: uuid.UUID) -> uuid.UUID | None:
    """Remove the analysis and its artifact; a job still running is canceled (its id is
    returned, for the caller to signal once the transaction committed)."""
    repo = ctx.repo
    analysis = repo.require(analysis_id)
    canceled: uuid.UUID | None = None
    if analysis.job_id is not None:
        jobs = JobRepository(ctx.session, ctx.principal)
        job = jobs.get(analysis.job_id)
        if job is not None and job.state in (JobState.QUEUED, JobState.RUNNING):
            jobs.request_cancel(job)
            canceled = job.id
    keys = [k for k in (analysis.artifact_key, analysis.artifact_json_key) if k]
    AuditLog(ctx.session, ctx.principal, ctx.request_id).record(
        "analysis.delete",
        target_type="analysis",
        target_id=analysis.id,
        tenant_id=ctx.principal.tenant_id,
    )
    repo.delete(analysis)
    s3, bucket = ctx.s3, ctx.settings.s3_bucket

    def remove_objects() -> None:
        for key in keys:
            s3.remove_object(bucket, key)

    ctx.outbox.after_commit(remove_objects)
    return canceled


__all__ = ["Analyses", "AnalysisKind", "create", "delete", "download_url", "read", "reads"]
