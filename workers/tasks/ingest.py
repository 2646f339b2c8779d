"""The ingest pipeline of one document version:
download → extract → normalise → chunk → embed → index (inactive) → chunk rows → activate.

Safe to run again at any point: chunk ids are derived from (document, version, position),
vectors already in the index are not embedded again, chunk rows are inserted with
``ON CONFLICT DO NOTHING``, and a version's vectors become searchable only in the last step.
Between steps the job's cancel flag is checked; a canceled job removes what it wrote.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from haven.answer_cache import invalidate_documents
from haven.auth.principal import Principal
from haven.db.engine import transaction
from haven.db.repositories import ChunkRepository, DocumentRepository
from haven.db.tables import Document, DocumentState, DocumentVersion, Job, Role
from haven.index import IndexedChunk, SparseVector, chunk_id, passage_text
from haven.jobs import JobStore
from workers.ingest.chunking import ChunkDraft, chunk_blocks
from workers.ingest.extract import ExtractLimits, extract
from workers.ingest.normalize import normalize_blocks
from workers.runtime import WorkerRuntime

log = structlog.get_logger("haven.ingest")

STEPS = ("download", "extract", "chunk", "embed", "index", "activate")


class JobCanceled(Exception):
    """The job was canceled while it ran."""


class JobLost(Exception):
    """The job is no longer this run's (the reaper requeued it after missed heartbeats)."""


@dataclass(frozen=True)
class Subject:
    job_id: uuid.UUID
    principal: Principal  # the job's tenant, acting as the system
    document_id: uuid.UUID
    version_id: uuid.UUID
    version: int
    object_key: str
    mime: str
    title: str
    tags: list[str]
    created_at: datetime


def _system_principal(job: Job) -> Principal:
    return Principal(subject_id=job.id, tenant_id=job.tenant_id, role=Role.EDITOR, kind="user")


class IngestRun:
    def __init__(self, rt: WorkerRuntime, subject: Subject, keepalive: Callable[[], None]) -> None:
        self.rt = rt
        self.subject = subject
        self.settings = rt.settings
        self.keepalive = keepalive  # renews this run's lease on the job

    # -- bookkeeping -----------------------------------------------------------------------
    def _step(self, number: int, total_units: int | None = None) -> None:
        """Heartbeat + progress at a step boundary; stop if the job was canceled."""
        self._beat(done=number, total=total_units or len(STEPS))

    def _beat(self, **progress: int) -> None:
        self.keepalive()
        with transaction(self.rt.session_factory) as session:
            outcome = JobStore(session).beat(self.subject.job_id, **progress)
        if outcome == "cancel":
            raise JobCanceled()
        if outcome == "lost":
            raise JobLost()

    # -- the steps ---------------------------------------------------------------------------
    def run(self) -> int:
        s = self.subject
        with tempfile.TemporaryDirectory(prefix="haven-ingest-") as tmp:
            self._step(0)
            path = Path(tmp) / "raw"
            self.rt.s3.fget_object(self.settings.s3_bucket, s.object_key, str(path))
            self._step(1)
            limits = ExtractLimits(
                ocr=self.settings.ocr_enabled, max_pages=self.settings.extract_max_pages
            )
            blocks = normalize_blocks(extract(path, s.mime, limits))
        self._step(2)
        drafts = chunk_blocks(
            blocks,
            self.rt.tokenizer,
            max_tokens=self.settings.chunk_max_tokens,
            overlap_tokens=self.settings.chunk_overlap_tokens,
        )
        self._step(3)
        self._embed_and_index(drafts)
        self._step(4)
        self._write_chunk_rows(drafts)
        self._step(5)
        self._activate(len(drafts))
        return len(drafts)

    def _payload(
        self, draft: ChunkDraft, cid: uuid.UUID, models: dict[str, str]
    ) -> dict[str, object]:
        s = self.subject
        return {
            "tenant_id": str(s.principal.tenant_id),
            "document_id": str(s.document_id),
            "version": s.version,
            "version_id": str(s.version_id),
            "chunk_id": str(cid),
            "position": draft.position,
            "page": draft.page,
            "heading": draft.heading,
            "lang": "und",
            "mime": s.mime,
            "title": s.title,
            "tags": s.tags,
            "updated_at": s.created_at.isoformat(),
            "text": draft.text,
            "embed_models": models,
        }

    def _embed_and_index(self, drafts: list[ChunkDraft]) -> None:
        s = self.subject
        aliases = list(self.settings.emb_aliases)
        self.rt.index.ensure(self.rt.dimensions)
        ids = [chunk_id(s.document_id, s.version, d.position) for d in drafts]
        # A retry after a crash does not embed again what already reached the index.
        done = self.rt.index.existing_ids(ids)
        todo = [(cid, d) for cid, d in zip(ids, drafts, strict=True) if cid not in done]
        batch = self.settings.emb_request_batch
        for start in range(0, len(todo), batch):
            part = todo[start : start + batch]
            response = self.rt.emb.embed(
                [passage_text(d.heading, d.text) for _, d in part],
                aliases=aliases,
                sparse="document",
            )
            models = {m.alias: f"{m.name}@{m.version}" for m in response.models}
            self.rt.index.upsert(
                IndexedChunk(
                    id=cid,
                    dense={alias: item.dense[alias] for alias in aliases},
                    sparse=SparseVector(item.sparse.indices, item.sparse.values)
                    if item.sparse
                    else SparseVector([], []),
                    payload=self._payload(draft, cid, models),
                )
                for (cid, draft), item in zip(part, response.data, strict=True)
            )
            self._beat()

    def _write_chunk_rows(self, drafts: list[ChunkDraft]) -> None:
        s = self.subject
        rows = [
            {
                "id": chunk_id(s.document_id, s.version, d.position),
                "document_id": s.document_id,
                "version_id": s.version_id,
                "position": d.position,
                "page": d.page,
                "heading": d.heading,
                "token_count": d.token_count,
                "text_sha256": d.sha256,
            }
            for d in drafts
        ]
        with transaction(self.rt.session_factory) as session:
            chunks = ChunkRepository(session, s.principal)
            for start in range(0, len(rows), 1000):
                chunks.insert_many(rows[start : start + 1000])

    def _activate(self, chunk_count: int) -> None:
        s = self.subject
        with transaction(self.rt.session_factory) as session:
            store = JobStore(session)
            if store.cancel_requested(s.job_id):
                raise JobCanceled()
            documents = DocumentRepository(session, s.principal)
            document = documents.get(s.document_id)
            version = session.get(DocumentVersion, s.version_id)
            if document is None or version is None:
                raise JobCanceled()  # deleted while we ran
            latest = max(v.version for v in documents.versions(document.id))
            if s.version < latest:
                # A newer version was uploaded meanwhile; it will take over when it is ready.
                version.state = DocumentState.READY
            else:
                chunks = ChunkRepository(session, s.principal)
                self.rt.index.activate_version(
                    [chunk_id(s.document_id, s.version, p) for p in range(chunk_count)],
                    chunks.ids_of_other_versions(document.id, version.id),
                )
                chunks.delete_other_versions(document.id, version.id)
                version.state = DocumentState.READY
                document.state = DocumentState.READY
                document.current_version = s.version
            store.finish(s.job_id)
        # Answers that cited the document's earlier version are stale now.
        invalidate_documents(self.rt.redis, s.principal.tenant_id, [s.document_id])
        log.info(
            "ingest.ready", document_id=str(s.document_id), version=s.version, chunks=chunk_count
        )

    def discard(self) -> None:
        """Remove everything this version wrote (cancel or permanent failure)."""
        s = self.subject
        self.rt.index.delete_version(s.principal.tenant_id, s.version_id)
        with transaction(self.rt.session_factory) as session:
            ChunkRepository(session, s.principal).delete_version(s.version_id)


def load_subject(rt: WorkerRuntime, job: Job) -> Subject | None:
    principal = _system_principal(job)
    with transaction(rt.session_factory) as session:
        version = session.get(DocumentVersion, job.subject_id)
        document = session.get(Document, version.document_id) if version else None
        if version is None or document is None or version.tenant_id != job.tenant_id:
            return None
        return Subject(
            job_id=job.id,
            principal=principal,
            document_id=document.id,
            version_id=version.id,
            version=version.version,
            object_key=version.object_key,
            mime=document.mime,
            title=document.title,
            tags=list(document.tags),
            created_at=version.created_at or datetime.now(UTC),
        )


def mark_version(rt: WorkerRuntime, subject: Subject, state: DocumentState) -> None:
    """Reflect a job that ended without success on its version and, if nothing of the
    document is searchable yet, on the document."""
    with transaction(rt.session_factory) as session:
        version = session.get(DocumentVersion, subject.version_id)
        document = session.get(Document, subject.document_id)
        if version is not None:
            version.state = state
        if document is not None and document.current_version is None:
            document.state = state


def set_processing(rt: WorkerRuntime, subject: Subject) -> None:
    with transaction(rt.session_factory) as session:
        version = session.get(DocumentVersion, subject.version_id)
        document = session.get(Document, subject.document_id)
        if version is not None:
            version.state = DocumentState.PROCESSING
        if document is not None and document.current_version is None:
            document.state = DocumentState.PROCESSING
