"""The ingest pipeline of one document version:
download → extract → normalise → chunk → embed → index (inactive) → chunk rows → activate.

Safe to run again at any point: chunk ids are derived from (document, version, position),
vectors already in the index are not embedded again, chunk rows are inserted with
``ON CONFLICT DO NOTHING``, and a version's vectors become searchable only in the last step,
in the same transaction that writes its chunk rows and finishes the job. Between steps the
job's heartbeat looks for a cancel; a canceled job removes what it wrote.
"""

from __future__ import annotations

import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Select, case, select, true, update
from sqlalchemy.orm import Session

from haven import lexical
from haven.answer_cache import invalidate_documents
from haven.auth.principal import Principal
from haven.db.engine import transaction
from haven.db.repositories import ChunkRepository, DocumentRepository
from haven.db.tables import Document, DocumentState, DocumentVersion, Job, Role
from haven.index import ChunkIndex, IndexedChunk, SparseVector, chunk_id, passage_text
from haven.index_pointer import Target
from haven.jobs import claim_statement, job_params
from haven.language import main_language
from haven.storage import download
from haven.tracing import span
from workers.ingest.chunking import ChunkDraft, chunk_blocks
from workers.ingest.normalize import normalize_blocks
from workers.ingest.pool import ExtractorBusy, extract_isolated, extraction_backlogged
from workers.jobs.handler import Claim, finish
from workers.jobs.heartbeat import Heartbeat, JobCanceled, JobDeferred
from workers.runtime import WorkerRuntime

log = structlog.get_logger("haven.ingest")

STEPS = ("download", "extract", "chunk", "embed", "activate")


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
    attempt: int  # 1 for the job's first run


class IngestRun:
    def __init__(self, rt: WorkerRuntime, claim: Claim, heartbeat: Heartbeat) -> None:
        self.rt = rt
        self.claim = claim
        self.subject: Subject = claim.subject
        self.settings = rt.settings
        self.beat = heartbeat  # renews the lease, records progress, stops on cancel
        self.langs: dict[int, str] = {}  # chunk position -> language

    def run(self) -> int:
        s = self.subject
        tenant = str(s.principal.tenant_id)
        # This tenant's files already hold its share of the extractors, and for a while: the
        # job would only wait, holding a job thread another tenant's job could use.
        if extraction_backlogged(self.settings, tenant):
            raise JobDeferred("extract.busy")
        # Each step is a span of the job's trace when tracing is on (haven.tracing).
        with tempfile.TemporaryDirectory(prefix="haven-ingest-") as tmp:
            path = Path(tmp) / "raw"
            with span("ingest.download"):
                download(self.rt.s3, self.settings.s3_bucket, s.object_key, path)
            self.beat(done=1)
            with span("ingest.extract", mime=s.mime):
                try:
                    extracted = extract_isolated(path, s.mime, self.settings, tenant=tenant)
                except ExtractorBusy as exc:
                    raise JobDeferred("extract.busy") from exc
                blocks = normalize_blocks(extracted)
        self.beat(done=2)
        with span("ingest.chunk"):
            drafts = chunk_blocks(
                blocks,
                self.rt.tokenizer,
                max_tokens=self.settings.chunk_max_tokens,
                overlap_tokens=self.settings.chunk_overlap_tokens,
            )
        # Each chunk's language, for its payload (the `lang` filter) and its row.
        self.langs = {d.position: self.rt.detector.detect(d.text) for d in drafts}
        self.beat(done=3)
        with span("ingest.embed_index", chunks=len(drafts)):
            self._embed_and_index(drafts)
        self.beat(done=4)
        with span("ingest.activate"):
            self._activate(drafts)
        return len(drafts)

    def _payload(
        self, draft: ChunkDraft, cid: uuid.UUID, models: dict[str, str], lang: str
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
            "lang": lang,
            "analyzer": lexical.ANALYZER_ID,
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
        index = self.rt.ensured_index()
        # The live collection first; then, with the same chunks, a collection a re-index is
        # building and the one kept for a rollback, each with the model versions of its own
        # vectors (haven.index_pointer).
        pointer = self.rt.pointer.get()
        others = [t for t in pointer.writes if t.collection != index.collection]
        ids = [chunk_id(s.document_id, s.version, d.position) for d in drafts]
        # A retry after a crash does not embed again what already reached the index (a first
        # attempt has nothing there: every earlier run that ended removed what it wrote).
        done = index.existing_ids(ids) if s.attempt > 1 else set()
        todo = [(cid, d) for cid, d in zip(ids, drafts, strict=True) if cid not in done]
        batch = self.settings.emb_request_batch
        for start in range(0, len(todo), batch):
            part = todo[start : start + batch]
            texts = [passage_text(d.heading, d.text) for _, d in part]
            response = self.rt.emb.embed(
                texts,
                aliases=aliases,
                sparse="document",
                input_type="passage",
                pins=pointer.live.models or None,
            )
            sparse = [
                SparseVector(item.sparse.indices, item.sparse.values)
                if item.sparse
                else SparseVector([], [])
                for item in response.data
            ]
            models = {m.alias: f"{m.name}@{m.version}" for m in response.models}
            index.upsert(
                IndexedChunk(
                    id=cid,
                    dense={alias: item.dense[alias] for alias in aliases},
                    sparse=vector,
                    payload=self._payload(draft, cid, models, self.langs[draft.position]),
                )
                for (cid, draft), item, vector in zip(part, response.data, sparse, strict=True)
            )
            for target in others:
                self._write_beside(target, aliases, part, texts, sparse)
            self.beat()

    def _write_beside(
        self,
        target: Target,
        aliases: list[str],
        part: list[tuple[uuid.UUID, ChunkDraft]],
        texts: list[str],
        sparse: list[SparseVector],
    ) -> None:
        """The same chunks into a collection beside the live one, embedded with its models.
        Best effort: what does not reach a building collection is embedded by the build's
        catch-up pass before its gate, and a failure here must not fail the document."""
        try:
            response = self.rt.emb.embed(
                texts, aliases=aliases, input_type="passage", pins=target.models or None
            )
            models = {m.alias: f"{m.name}@{m.version}" for m in response.models}
            ChunkIndex(self.rt.store, target.collection).upsert(
                IndexedChunk(
                    id=cid,
                    dense={alias: item.dense[alias] for alias in aliases},
                    sparse=vector,
                    payload=self._payload(draft, cid, models, self.langs[draft.position]),
                )
                for (cid, draft), item, vector in zip(part, response.data, sparse, strict=True)
            )
        except Exception as exc:  # best effort: see the docstring
            log.warning(
                "ingest.write_beside_failed", collection=target.collection, error=str(exc)[:300]
            )

    def _activate_beside(self, activated: list[uuid.UUID], stale: list[uuid.UUID]) -> None:
        """The version's switch in the collections beside the live one, for the points
        they hold (a building collection gets the rest from its build)."""
        live = self.rt.index.collection
        for target in self.rt.pointer.get().writes:
            if target.collection == live:
                continue
            try:
                beside = ChunkIndex(self.rt.store, target.collection)
                beside.activate_version(list(beside.existing_ids(activated)), stale)
            except Exception as exc:  # best effort, as _write_beside
                log.warning(
                    "ingest.activate_beside_failed",
                    collection=target.collection,
                    error=str(exc)[:300],
                )

    def _chunk_rows(self, drafts: list[ChunkDraft]) -> list[dict[str, object]]:
        s = self.subject
        return [
            {
                "id": chunk_id(s.document_id, s.version, d.position),
                "document_id": s.document_id,
                "version_id": s.version_id,
                "position": d.position,
                "page": d.page,
                "heading": d.heading,
                "token_count": d.token_count,
                "text_sha256": d.sha256,
                "lang": self.langs[d.position],
            }
            for d in drafts
        ]

    def _activate(self, drafts: list[ChunkDraft]) -> None:
        """Chunk rows, the switch to the new version and the job's end: one transaction."""
        s = self.subject
        chunk_count = len(drafts)
        rows = self._chunk_rows(drafts)
        with transaction(self.rt.session_factory) as session:
            finish(session, self.claim)  # only while this run's attempt holds the job
            documents = DocumentRepository(session, s.principal)
            newest = documents.newest_version_number(s.document_id, s.version_id)
            if newest is None:
                raise JobCanceled()  # deleted while we ran
            chunks = ChunkRepository(session, s.principal)
            for start in range(0, len(rows), 1000):
                chunks.insert_many(rows[start : start + 1000])
            # A newer version uploaded meanwhile takes over when it is ready; until then the
            # document keeps serving what it served.
            current = s.version >= newest
            if current:
                activated = [chunk_id(s.document_id, s.version, p) for p in range(chunk_count)]
                stale = chunks.delete_other_versions(s.document_id, s.version_id)
                self.rt.index.activate_version(activated, stale)
                self._activate_beside(activated, stale)
            documents.mark_ready(
                s.document_id,
                s.version_id,
                s.version,
                current=current,
                lang=main_language((self.langs[d.position], len(d.text)) for d in drafts),
            )
        if s.version > 1:  # answers that cited an earlier version are stale now
            invalidate_documents(self.rt.redis, s.principal.tenant_id, [s.document_id])
        log.info(
            "ingest.ready", document_id=str(s.document_id), version=s.version, chunks=chunk_count
        )


def discard(rt: WorkerRuntime, tenant_id: uuid.UUID, version_id: uuid.UUID) -> None:
    """Remove everything a version's runs wrote (cancel or failure)."""
    rt.index.delete_version(tenant_id, version_id)
    principal = _system(tenant_id, version_id)
    with transaction(rt.session_factory) as session:
        ChunkRepository(session, principal).delete_version(version_id)


def _system(tenant_id: uuid.UUID, job_id: uuid.UUID) -> Principal:
    """The job's tenant, acting as the system."""
    return Principal(subject_id=job_id, tenant_id=tenant_id, role=Role.EDITOR, kind="user")


def begin(rt: WorkerRuntime, job_id: uuid.UUID) -> Claim | None:
    """Claim the job, read what it ingests and mark that processing: one statement, one
    transaction. None when the job is not this run's to do."""
    with transaction(rt.session_factory) as session:
        # The caller holds the job's lock, so a job still "running" belongs to a worker that
        # died: take it over.
        row = session.execute(_BEGIN, job_params(job_id)).one_or_none()
    if row is None:
        return None
    subject = None
    if row.version_id is not None and row.document_id is not None:
        subject = Subject(
            job_id=job_id,
            principal=_system(row.tenant_id, job_id),
            document_id=row.document_id,
            version_id=row.version_id,
            version=row.version,
            object_key=row.object_key,
            mime=row.mime,
            title=row.title,
            tags=list(row.tags),
            created_at=row.created_at or datetime.now(UTC),
            attempt=row.attempts,
        )
    return Claim(
        job_id=job_id,
        tenant_id=row.tenant_id,
        subject_id=row.subject_id,
        attempt=row.attempts,
        max_attempts=row.max_attempts,
        subject=subject,
        gone=subject is None,
    )


def _begin_statement() -> Select[Any]:
    """claim → the job's version goes processing → so does its document, unless an earlier
    version is searchable; returns the job's counters and what the run needs to know.
    Parameters as for ``claim_statement`` (``job_params``)."""
    claimed = (
        claim_statement(takeover=True, steps=len(STEPS))
        .returning(Job.tenant_id, Job.subject_id, Job.attempts, Job.max_attempts)
        .cte("claimed")
    )
    version = (
        update(DocumentVersion)
        .where(
            DocumentVersion.id == claimed.c.subject_id,
            DocumentVersion.tenant_id == claimed.c.tenant_id,
        )
        .values(state=DocumentState.PROCESSING)
        .returning(
            DocumentVersion.id,
            DocumentVersion.document_id,
            DocumentVersion.version,
            DocumentVersion.object_key,
            DocumentVersion.created_at,
        )
        .cte("version")
    )
    document = (
        update(Document)
        .where(Document.id == version.c.document_id)
        .values(
            state=case(
                (Document.current_version.is_(None), DocumentState.PROCESSING),
                else_=Document.state,
            )
        )
        .returning(Document.id, Document.mime, Document.title, Document.tags)
        .cte("document")
    )
    return select(
        claimed.c.tenant_id,
        claimed.c.subject_id,
        claimed.c.attempts,
        claimed.c.max_attempts,
        version.c.id.label("version_id"),
        version.c.version,
        version.c.object_key,
        version.c.created_at,
        document.c.id.label("document_id"),
        document.c.mime,
        document.c.title,
        document.c.tags,
    ).select_from(claimed.outerjoin(version, true()).outerjoin(document, true()))


_BEGIN = _begin_statement()


def mark_version(
    rt: WorkerRuntime, tenant_id: uuid.UUID, version_id: uuid.UUID, state: DocumentState
) -> None:
    """Reflect a job that ended without success on its version and, if nothing of the
    document is searchable yet, on the document."""
    with transaction(rt.session_factory) as session:
        _set_state(session, tenant_id, version_id, state)


def _set_state(
    session: Session, tenant_id: uuid.UUID, version_id: uuid.UUID, state: DocumentState
) -> None:
    version = session.get(DocumentVersion, version_id)
    if version is None or version.tenant_id != tenant_id:
        return
    version.state = state
    document = session.get(Document, version.document_id)
    if document is not None and document.current_version is None:
        document.state = state
