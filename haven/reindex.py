"""Blue/green re-index of the chunk index when an embedding alias moves to another model.

1. **Check** (``reindex-check``, scheduled): the first run records which model versions the
   live collection holds (from its points' ``embed_models``, else the aliases' targets);
   every run drops a previous collection whose rollback window ended, and starts a build
   when an alias of ``HAVEN_EMB_ALIASES`` now points at another version than the live
   collection was built with (or a build is recorded and not running: it resumes).
2. **Build**: a new collection ``<name>_r<hex>`` beside the live one, with each alias's
   dimension read from the new version's manifest (never from the live collection or a
   guess); every batch's vectors are checked against it before anything is written. The
   chunks to embed are the rows of PostgreSQL whose version is their document's current
   one; their text is read from the live collection's payload and checked against the
   row's ``text_sha256`` (PostgreSQL keeps the hash, not the text). They are embedded by emb
   with the new version pinned, in batches, with progress and a cancel check per batch.
   Meanwhile ingest writes each new document to both collections and deletes reach both
   (``haven.index_pointer``). Chunks already in the new collection are skipped, so a build
   cut short by a worker restart resumes where it was; a last catch-up pass embeds what
   appeared behind the cursor (a document activated while its ingest had not seen the
   build yet).
3. **Gate**: every active document has as many active points in the new collection as it
   has chunk rows; and on eval queries the new index finds at least as well, within
   ``HAVEN_REINDEX_RECALL_MARGIN``: each query is the opening words of a sampled chunk
   (known-item search, no labels needed), answered by hybrid search in both collections
   with their own models, and a hit is the source chunk in the top 10. A failed gate keeps
   the build (not switched) with its report; running the re-index again re-gates it.
4. **Switch**: one row update; the old collection is kept as ``previous`` for
   ``HAVEN_REINDEX_KEEP_PREVIOUS_HOURS`` (ingest keeps writing to it, so a rollback loses
   nothing) and dropped by the first check after that. ``rollback`` is one update back.
5. **Cancel**: marks the build canceling; the build stops at its next batch, waits out the
   pointer caches (so ingest has stopped writing to it), drops the partial collection and
   clears the row. The live index is never touched.

One build per index at a time: the row's ``building_collection`` is claimed with a
conditional update, and the process building holds a Redis lock that expires, so a dead
worker's build is resumed by the next run.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
import structlog
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from haven.db.engine import transaction
from haven.db.tables import Chunk, Document, DocumentVersion
from haven.emb_client import EmbClient
from haven.errors import Conflict, Invalid
from haven.index import ChunkIndex, IndexedChunk, SparseVector, passage_text
from haven.index_pointer import (
    CANCELING,
    IndexPointers,
    Pointer,
    PointerCache,
    Target,
    recorded_models,
)
from haven.search import QueryVectors, SearchParams, search
from haven.vectorstore import Filter, Match, VectorStore
from models.registry import ModelRegistry

log = structlog.get_logger("haven.reindex")

LOCK_KEY = "haven:reindex:build"
EVAL_TOP = 10
EVAL_WORDS = 12


class Canceled(Exception):
    """The build was canceled; the partial collection is gone."""


@dataclass(frozen=True)
class ReindexConfig:
    collection: str  # the configured (first) collection name: the base of new names
    aliases: list[str]
    batch: int = 64
    keep_previous: timedelta = timedelta(hours=24)
    recall_margin: float = 0.05
    eval_queries: int = 20
    pointer_cache_seconds: float = 2.0
    # The build's own lock, renewed at every batch and eval query: a worker that died
    # mid-build lets the next run resume it after this long.
    lock_seconds: int = 900


@dataclass(frozen=True)
class ActiveChunk:
    id: uuid.UUID
    tenant_id: uuid.UUID
    document_id: uuid.UUID
    heading: str | None
    text_sha256: str


class ActiveChunks:
    """The chunks search serves, across tenants: rows of each document's current version
    (maintenance reads every tenant's; nothing here is tenant-facing)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def _base(self) -> Any:
        return (
            select(Chunk)
            .join(DocumentVersion, DocumentVersion.id == Chunk.version_id)
            .join(
                Document,
                (Document.id == Chunk.document_id)
                & (Document.current_version == DocumentVersion.version),
            )
        )

    def page(self, after: uuid.UUID | None, limit: int) -> list[ActiveChunk]:
        query = self._base().order_by(Chunk.id).limit(limit)
        if after is not None:
            query = query.where(Chunk.id > after)
        return [
            ActiveChunk(c.id, c.tenant_id, c.document_id, c.heading, c.text_sha256)
            for c in self.session.execute(query).scalars()
        ]

    def count(self) -> int:
        return int(
            self.session.execute(
                select(func.count()).select_from(self._base().subquery())
            ).scalar_one()
        )

    def per_document(self) -> dict[uuid.UUID, int]:
        sub = self._base().subquery()
        rows = self.session.execute(
            select(sub.c.document_id, func.count()).group_by(sub.c.document_id)
        )
        return {document_id: int(n) for document_id, n in rows}

    def sample(self, n: int) -> list[ActiveChunk]:
        """``n`` chunks spread evenly over the id order: the same set for the same corpus."""
        total = self.count()
        if total == 0 or n <= 0:
            return []
        step = max(1, total // n)
        numbered = (
            self._base()
            .with_only_columns(
                Chunk.id,
                Chunk.tenant_id,
                Chunk.document_id,
                Chunk.heading,
                Chunk.text_sha256,
                func.row_number().over(order_by=Chunk.id).label("n"),
            )
            .subquery()
        )
        rows = self.session.execute(
            select(numbered).where((numbered.c.n - 1) % step == 0).order_by(numbered.c.n).limit(n)
        )
        return [
            ActiveChunk(r.id, r.tenant_id, r.document_id, r.heading, r.text_sha256) for r in rows
        ]


def model_refs(registry: ModelRegistry, aliases: Sequence[str]) -> dict[str, str]:
    """What each alias points at now (``name/version``)."""
    return {alias: registry.resolve(alias).ref for alias in aliases}


def manifest_dimensions(registry: ModelRegistry, models: dict[str, str]) -> dict[str, int]:
    """Each alias's dimension, from its model version's manifest; a version that does not
    declare one is refused (a dimension is never guessed)."""
    dimensions = {}
    for alias, ref in models.items():
        name, _, version = ref.partition("/")
        manifest = registry.manifest(name, version)
        if manifest.type != "embed":
            raise Invalid(f"{ref} is a {manifest.type} model, not an embedding model")
        declared = manifest.parameters.get("dimension")
        if not isinstance(declared, int) or declared <= 0:
            raise Invalid(
                f"the manifest of {ref} declares no dimension: re-publish it with "
                "--param dimension=N",
                code="reindex.no_dimension",
            )
        dimensions[alias] = declared
    return dimensions


@dataclass
class GateReport:
    documents: int = 0
    chunks: int = 0
    missing_documents: list[str] = field(default_factory=list)
    queries: int = 0
    recall_old: float = 0.0
    recall_new: float = 0.0
    margin: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.missing_documents and self.recall_new >= self.recall_old - self.margin

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "documents": self.documents,
            "chunks": self.chunks,
            "missing_documents": self.missing_documents[:20],
            "missing_document_count": len(self.missing_documents),
            "eval_queries": self.queries,
            "recall_at_10_old": round(self.recall_old, 4),
            "recall_at_10_new": round(self.recall_new, 4),
            "recall_margin": self.margin,
        }


class Reindexer:
    def __init__(
        self,
        config: ReindexConfig,
        session_factory: sessionmaker[Session],
        store: VectorStore,
        emb: EmbClient,
        registry: ModelRegistry,
        redis_client: redis.Redis,
        *,
        progress: Callable[[int, int, str], None] = lambda done, total, label: None,
        check_cancel: Callable[[], None] = lambda: None,
        pointer_cache: PointerCache | None = None,
    ) -> None:
        self.config = config
        self.session_factory = session_factory
        self.store = store
        self.emb = emb
        self.registry = registry
        self.redis = redis_client
        self.progress = progress
        self.check_cancel = check_cancel
        self.pointer_cache = pointer_cache
        self._token = uuid.uuid4().hex

    # -- the pointer --

    def pointer(self) -> Pointer:
        with transaction(self.session_factory) as session:
            return IndexPointers(session, self.config.collection).read()

    def _changed(self) -> None:
        if self.pointer_cache is not None:
            self.pointer_cache.invalidate()

    def initialize(self) -> Pointer:
        """The pointer row, created on the first run from what the live collection holds."""
        current = self.pointer()
        if current.generation:
            return current
        live = ChunkIndex(self.store, current.live.collection)
        models = recorded_models(live) or model_refs(self.registry, self.config.aliases)
        with transaction(self.session_factory) as session:
            created = IndexPointers(session, self.config.collection).ensure(models)
        log.info("reindex.pointer.created", collection=created.live.collection, models=models)
        return created

    # -- the scheduled check --

    def check(self, *, force: bool = False) -> dict[str, Any]:
        """Drop an expired previous collection; build when an alias moved, a build is
        pending, or ``force``. Returns what it found and did."""
        pointer = self.initialize()
        report: dict[str, Any] = {
            "live": pointer.live.collection,
            "live_models": pointer.live.models,
        }
        until = pointer.previous_until
        if pointer.previous is not None and until is not None and until <= datetime.now(UTC):
            report["dropped_previous"] = self.drop_previous()
        wanted = model_refs(self.registry, self.config.aliases)
        report["alias_targets"] = wanted
        if pointer.building is not None:
            try:
                report["build"] = self.build()
            except Conflict as exc:  # another worker is on it
                report["build"] = {"skipped": exc.message}
        elif force or wanted != {a: pointer.live.models.get(a) for a in wanted}:
            self.start(wanted)
            report["build"] = self.build()
        else:
            report["build"] = None
        return report

    def drop_previous(self) -> str | None:
        with transaction(self.session_factory) as session:
            name = IndexPointers(session, self.config.collection).forget_previous()
        self._changed()
        if name:
            time.sleep(self.config.pointer_cache_seconds)  # nobody writes to it any more
            ChunkIndex(self.store, name).drop()
            log.info("reindex.previous.dropped", collection=name)
        return name

    # -- start, build, gate, switch --

    def start(self, models: dict[str, str]) -> Pointer:
        """Claim the index for a build with ``models`` and create the new collection with
        the dimensions their manifests declare."""
        dimensions = manifest_dimensions(self.registry, models)
        collection = f"{self.config.collection}_r{uuid.uuid4().hex[:8]}"
        with transaction(self.session_factory) as session:
            pointer = IndexPointers(session, self.config.collection).begin_build(collection, models)
        self._changed()
        ChunkIndex(self.store, collection).ensure(dimensions)
        log.info("reindex.start", collection=collection, models=models, dimensions=dimensions)
        return pointer

    def build(self) -> dict[str, Any]:
        """Build (or resume) the recorded collection, gate it and switch. Returns the
        report; raises ``Canceled`` when the build was canceled (its collection dropped)."""
        if not self.redis.set(LOCK_KEY, self._token, nx=True, ex=self.config.lock_seconds):
            raise Conflict("another worker is building the re-index", code="reindex.in_progress")
        try:
            return self._build()
        finally:
            if self.redis.get(LOCK_KEY) == self._token.encode():
                self.redis.delete(LOCK_KEY)

    def _build(self) -> dict[str, Any]:
        pointer = self.pointer()
        if pointer.building is None:
            raise Conflict("no re-index is in progress", code="reindex.not_running")
        if pointer.building_state == CANCELING:
            self._finish_cancel(pointer.building)
        target = pointer.building
        dimensions = manifest_dimensions(self.registry, target.models)
        new = ChunkIndex(self.store, target.collection)
        new.ensure(dimensions)  # a build resumed after its collection was lost starts over
        started = time.monotonic()
        try:
            embedded = self._pass(pointer.live, target, dimensions)
            embedded += self._pass(pointer.live, target, dimensions)  # the catch-up
        except Invalid as exc:
            # The new model cannot fill this collection (a dimension its manifest does not
            # declare, another version served): nothing it made was written; give up the
            # build so the next check does not resume it.
            self._abandon(target, {"failed": exc.code or "reindex.invalid", "error": exc.message})
            raise
        gate = self.gate(pointer.live, target)
        seconds = round(time.monotonic() - started, 2)
        report = {
            "collection": target.collection,
            "models": target.models,
            "embedded": embedded,
            "seconds": seconds,
            "chunks_per_second": round(embedded / seconds, 1) if seconds else None,
            "gate": gate.to_json(),
        }
        if not gate.passed:
            with transaction(self.session_factory) as session:
                IndexPointers(session, self.config.collection).report(report)
            log.warning("reindex.gate_failed", **report)
            report["switched"] = False
            return report
        self._job_check()
        self._check_canceled()
        report["switched"] = True
        with transaction(self.session_factory) as session:
            switched, replaced = IndexPointers(session, self.config.collection).switch(
                self.config.keep_previous, report
            )
        self._changed()
        log.info("reindex.switched", live=switched.live.collection, previous=replaced, **report)
        if replaced and replaced not in switched.collections:
            time.sleep(self.config.pointer_cache_seconds)
            ChunkIndex(self.store, replaced).drop()
        return report

    def _pass(self, live: Target, target: Target, dimensions: dict[str, int]) -> int:
        """Embed every active chunk not yet in ``target``; returns how many."""
        source = ChunkIndex(self.store, live.collection)
        new = ChunkIndex(self.store, target.collection)
        with transaction(self.session_factory) as session:
            total = ActiveChunks(session).count()
        done, embedded, after = 0, 0, None
        while True:
            self._job_check()
            self._check_canceled()
            self.redis.expire(LOCK_KEY, self.config.lock_seconds)
            with transaction(self.session_factory) as session:
                page = ActiveChunks(session).page(after, self.config.batch)
            if not page:
                break
            after = page[-1].id
            present = new.existing_ids([c.id for c in page])
            todo = [c for c in page if c.id not in present]
            if todo:
                embedded += self._embed(source, new, target, dimensions, todo)
            done += len(page)
            self.progress(done, max(total, done), "re-index")
            with transaction(self.session_factory) as session:
                IndexPointers(session, self.config.collection).progress(done, max(total, done))
        return embedded

    def _embed(
        self,
        source: ChunkIndex,
        new: ChunkIndex,
        target: Target,
        dimensions: dict[str, int],
        chunks: list[ActiveChunk],
    ) -> int:
        payloads = source.payloads([c.id for c in chunks])
        usable: list[tuple[ActiveChunk, dict[str, Any]]] = []
        for chunk in chunks:
            payload = payloads.get(chunk.id)
            text = str(payload.get("text") or "") if payload else ""
            if payload is None or hashlib.sha256(text.encode()).hexdigest() != chunk.text_sha256:
                # The gate reports the document as missing.
                log.warning("reindex.chunk_text_missing", chunk_id=str(chunk.id))
                continue
            usable.append((chunk, payload))
        if not usable:
            return 0
        aliases = list(target.models)
        response = self.emb.embed(
            [passage_text(chunk.heading, str(p["text"])) for chunk, p in usable],
            aliases=aliases,
            sparse="document",
            input_type="passage",
            pins=target.models,
        )
        served = {m.alias: f"{m.name}/{m.version}" for m in response.models}
        if served != target.models:
            raise Invalid(
                f"emb embedded with {served}, not {target.models}: nothing written",
                code="reindex.wrong_model",
            )
        for item in response.data:
            for alias, vector in item.dense.items():
                if len(vector) != dimensions[alias]:
                    raise Invalid(
                        f"{target.models[alias]} returned {len(vector)} dimensions; its "
                        f"manifest declares {dimensions[alias]}: nothing written",
                        code="reindex.wrong_dimension",
                    )
        embed_models = {m.alias: f"{m.name}@{m.version}" for m in response.models}
        return new.upsert(
            (
                IndexedChunk(
                    id=chunk.id,
                    dense=dict(item.dense),
                    sparse=SparseVector(item.sparse.indices, item.sparse.values)
                    if item.sparse
                    else SparseVector([], []),
                    payload={**payload, "embed_models": embed_models},
                )
                for (chunk, payload), item in zip(usable, response.data, strict=True)
            ),
            keep_active=True,
        )

    def gate(self, live: Target, target: Target) -> GateReport:
        report = GateReport(margin=self.config.recall_margin)
        new = ChunkIndex(self.store, target.collection)
        with transaction(self.session_factory) as session:
            expected = ActiveChunks(session).per_document()
            sample = ActiveChunks(session).sample(self.config.eval_queries)
        report.documents = len(expected)
        report.chunks = sum(expected.values())
        for document_id, count in expected.items():
            found = self.store.count(
                target.collection,
                _filter(Match("document_id", str(document_id)), Match("active", True)),
            )
            if found < count:
                report.missing_documents.append(str(document_id))
        old = ChunkIndex(self.store, live.collection)
        texts = old.payloads([c.id for c in sample])
        alias = self.config.aliases[0]
        hits_old = hits_new = 0
        for i, chunk in enumerate(sample, start=1):
            self.redis.expire(LOCK_KEY, self.config.lock_seconds)
            self.progress(i, len(sample), "gate")
            text = str(texts.get(chunk.id, {}).get("text") or "")
            query = " ".join(text.split()[:EVAL_WORDS])
            if not query:
                continue
            report.queries += 1
            hits_old += self._finds(old, live, alias, chunk, query)
            hits_new += self._finds(new, target, alias, chunk, query)
        if report.queries:
            report.recall_old = hits_old / report.queries
            report.recall_new = hits_new / report.queries
        return report

    def _finds(
        self, index: ChunkIndex, target: Target, alias: str, chunk: ActiveChunk, query: str
    ) -> int:
        pin = target.models.get(alias)
        embedded = self.emb.embed(
            [query],
            aliases=[alias],
            sparse="query",
            input_type="query",
            pins={alias: pin} if pin else None,
        )
        item = embedded.data[0]
        vectors = QueryVectors(
            alias=alias,
            dense=item.dense[alias],
            sparse=SparseVector(item.sparse.indices, item.sparse.values)
            if item.sparse
            else SparseVector([], []),
        )
        outcome = search(
            index,
            chunk.tenant_id,
            vectors,
            SearchParams(mode="hybrid", top_k=EVAL_TOP, channel_ranks=False),
        )
        return int(any(hit.chunk_id == chunk.id for hit in outcome.hits))

    # -- cancel and rollback --

    def _check_canceled(self) -> None:
        pointer = self.pointer()
        if pointer.building is None:
            raise Canceled("the re-index was canceled")
        if pointer.building_state == CANCELING:
            self._finish_cancel(pointer.building)

    def _abandon(self, building: Target, report: dict[str, Any]) -> None:
        ChunkIndex(self.store, building.collection).drop()
        with transaction(self.session_factory) as session:
            IndexPointers(session, self.config.collection).clear_building(
                {**report, "collection": building.collection, "at": datetime.now(UTC).isoformat()}
            )
        self._changed()
        log.warning("reindex.abandoned", collection=building.collection, **report)

    def _job_check(self) -> None:
        """The job's own cancel (``haven maintenance cancel``, the admin API) cancels the
        build the same way as ``re-index --cancel``, then ends the job as canceled."""
        try:
            self.check_cancel()
        except Exception:
            with transaction(self.session_factory) as session:
                pointer = IndexPointers(session, self.config.collection).request_cancel()
            if pointer.building is not None:
                self._drop_build(pointer.building)
            raise

    def _finish_cancel(self, building: Target) -> None:
        self._drop_build(building)
        raise Canceled(f"the re-index into {building.collection} was canceled")

    def _drop_build(self, building: Target) -> None:
        time.sleep(self.config.pointer_cache_seconds)  # ingest has stopped writing to it
        ChunkIndex(self.store, building.collection).drop()
        with transaction(self.session_factory) as session:
            IndexPointers(session, self.config.collection).clear_building(
                {"canceled": building.collection, "at": datetime.now(UTC).isoformat()}
            )
        self._changed()
        log.info("reindex.canceled", collection=building.collection)


def request_cancel(session_factory: sessionmaker[Session], collection: str) -> Pointer:
    """Ask the running build to stop (it drops its partial collection)."""
    with transaction(session_factory) as session:
        return IndexPointers(session, collection).request_cancel()


def rollback(session_factory: sessionmaker[Session], collection: str) -> Pointer:
    """Serve the previous collection again: one update, nothing rebuilt."""
    with transaction(session_factory) as session:
        pointer = IndexPointers(session, collection).rollback()
    log.info("reindex.rolled_back", live=pointer.live.collection)
    return pointer


def _filter(*conditions: Match) -> Filter:
    return Filter(must=conditions)
