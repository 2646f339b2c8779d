"""Bring indexed chunks up to the current lexical analyzer and language detection, in place.

Every chunk in the index records the analyzer that made its lexical vector (the ``analyzer``
payload, ``haven.lexical.ANALYZER_ID``; chunks from before it was recorded have none and were
made by the English-only analyzer). A chunk whose analyzer is not the current one has terms
the current queries do not produce — a Russian word indexed unstemmed never matches its
stemmed query — so after an upgrade the operator runs ``haven maintenance relex``: each such
chunk's lexical vector is computed again from its stored text, its language detected, and
both written back, together with the ``lang`` of its row in PostgreSQL and its document's
main language. Dense vectors are left alone (no embedding model runs), so it takes seconds
per thousand chunks; running it again finds nothing to do.

Searches keep working meanwhile: an English query matches old and new chunks alike (English
terms did not change), a Russian one finds each chunk as soon as it is done.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from haven import lexical
from haven.db.engine import transaction
from haven.db.tables import Chunk, Document
from haven.index import ChunkIndex, SparseVector, passage_text
from haven.language import UNDETERMINED, Detector

log = structlog.get_logger("haven.relex")


@dataclass
class RelexReport:
    seen: int = 0
    updated: int = 0
    # chunk id -> language, for the chunks updated
    chunk_langs: dict[uuid.UUID, str] = field(default_factory=dict)
    # document id -> main language, for the documents with an updated active chunk
    document_langs: dict[uuid.UUID, str] = field(default_factory=dict)


def relex_index(
    index: ChunkIndex, detector: Detector, bm25: lexical.BM25, *, batch: int = 256
) -> RelexReport:
    report = RelexReport()
    # Weight of each language in each document's active chunks (all of them, updated or
    # not), for the documents' main language.
    weights: dict[uuid.UUID, Counter[str]] = defaultdict(Counter)
    touched: set[uuid.UUID] = set()
    for page in index.points(batch):
        updates: list[tuple[uuid.UUID, SparseVector, dict[str, Any]]] = []
        for point_id, payload in page:
            report.seen += 1
            text = str(payload.get("text") or "")
            lang = str(payload.get("lang") or UNDETERMINED)
            stale = payload.get("analyzer") != lexical.ANALYZER_ID
            if stale:
                heading = payload.get("heading")
                vector = lexical.document_vector(
                    passage_text(str(heading) if heading else None, text), bm25
                )
                lang = detector.detect(text)
                updates.append(
                    (
                        point_id,
                        SparseVector(vector.indices, vector.values),
                        {"lang": lang, "analyzer": lexical.ANALYZER_ID},
                    )
                )
                report.chunk_langs[point_id] = lang
            document = payload.get("document_id")
            if document and payload.get("active"):
                document_id = uuid.UUID(str(document))
                if lang != UNDETERMINED:
                    weights[document_id][lang] += max(len(text), 1)
                if stale:
                    touched.add(document_id)
        index.set_lexical(updates)
        report.updated += len(updates)
        if updates:
            log.info("relex.progress", seen=report.seen, updated=report.updated)
    for document_id in touched:
        found = weights.get(document_id)
        report.document_langs[document_id] = found.most_common(1)[0][0] if found else UNDETERMINED
    return report


def record_languages(session_factory: sessionmaker[Session], report: RelexReport) -> None:
    """The updated chunks' languages and their documents' main languages in PostgreSQL."""
    by_lang: dict[str, list[uuid.UUID]] = defaultdict(list)
    for chunk_id, lang in report.chunk_langs.items():
        by_lang[lang].append(chunk_id)
    with transaction(session_factory) as session:
        for lang, ids in by_lang.items():
            for start in range(0, len(ids), 1000):
                session.execute(
                    update(Chunk)
                    .where(Chunk.id.in_(ids[start : start + 1000]))
                    .values(lang=lang)
                    .execution_options(synchronize_session=False)
                )
        for document_id, lang in report.document_langs.items():
            session.execute(
                update(Document)
                .where(Document.id == document_id)
                .values(lang=lang)
                .execution_options(synchronize_session=False)
            )
