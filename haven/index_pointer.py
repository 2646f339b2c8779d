"""Haven's pointer to the live vector collection of the chunk index (blue/green re-index).

One PostgreSQL row (``index_pointers``) per index says which collection searches read
(``live``), which one a re-index is building beside it (``building``) and which one the last
switch left behind for a rollback (``previous``), each with the embedding model versions
(``alias -> name/version``) its vectors come from. Haven's own pointer rather than Qdrant's
alias: the embedded store (Qdrant Edge) has no aliases, and the models recorded next to the
collection name are what a query must be embedded with, which an alias cannot carry.

Switching is one ``UPDATE`` of that row; a rollback is another. Every process keeps the row
it read for ``HAVEN_INDEX_POINTER_CACHE_SECONDS`` (2 s) and reads it again after a switch
of its own. A process that still holds the old row for those seconds searches the previous
collection with the previous model, which stays whole until the rollback window (hours)
ends, so a stale cache answers correctly, only from the old index.

Without a row (an installation that never re-indexed) the live collection is
``HAVEN_QDRANT_COLLECTION`` and queries use whatever the alias serves, as before.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, sessionmaker

from haven.db.engine import transaction
from haven.db.tables import IndexPointer
from haven.errors import Conflict, NotFound
from haven.index import ChunkIndex

INDEX = "chunks"
BUILDING = "building"
CANCELING = "canceling"


@dataclass(frozen=True)
class Target:
    """A collection and the model versions its dense vectors come from."""

    collection: str
    models: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Pointer:
    live: Target
    generation: int = 0  # 0: no row yet
    building: Target | None = None
    building_state: str | None = None
    previous: Target | None = None
    previous_until: datetime | None = None
    building_done: int = 0
    building_total: int = 0
    last_report: dict[str, Any] = field(default_factory=dict)

    @property
    def writes(self) -> list[Target]:
        """Where an ingest writes: the live collection, the one a re-index is building (so
        what is uploaded meanwhile is there at the switch) and the previous one while it is
        kept (so a rollback finds what was uploaded after the switch)."""
        found = [self.live]
        if self.building is not None and self.building_state == BUILDING:
            found.append(self.building)
        if self.previous is not None:
            found.append(self.previous)
        return found

    @property
    def collections(self) -> list[str]:
        """Every collection a delete must reach (a rollback must not bring a deleted
        document back)."""
        found = [self.live.collection]
        for other in (self.building, self.previous):
            if other is not None and other.collection not in found:
                found.append(other.collection)
        return found

    def to_json(self) -> dict[str, Any]:
        def target(t: Target | None) -> dict[str, Any] | None:
            return None if t is None else {"collection": t.collection, "models": t.models}

        return {
            "generation": self.generation,
            "live": target(self.live),
            "building": target(self.building),
            "building_state": self.building_state,
            "building_done": self.building_done,
            "building_total": self.building_total,
            "previous": target(self.previous),
            "previous_until": self.previous_until.isoformat() if self.previous_until else None,
            "last_report": self.last_report,
        }


def _pointer(row: IndexPointer) -> Pointer:
    return Pointer(
        live=Target(row.live_collection, dict(row.live_models or {})),
        generation=row.generation,
        building=Target(row.building_collection, dict(row.building_models or {}))
        if row.building_collection
        else None,
        building_state=row.building_state,
        previous=Target(row.previous_collection, dict(row.previous_models or {}))
        if row.previous_collection
        else None,
        previous_until=row.previous_until,
        building_done=row.building_done,
        building_total=row.building_total,
        last_report=dict(row.last_report or {}),
    )


class IndexPointers:
    """The pointer rows; the caller's session, the caller commits."""

    def __init__(self, session: Session, default_collection: str, name: str = INDEX) -> None:
        self.session = session
        self.default_collection = default_collection
        self.name = name

    def read(self) -> Pointer:
        row = self.session.get(IndexPointer, self.name)
        if row is None:
            return Pointer(live=Target(self.default_collection))
        return _pointer(row)

    def _locked(self) -> IndexPointer:
        row = self.session.execute(
            select(IndexPointer).where(IndexPointer.name == self.name).with_for_update()
        ).scalar_one_or_none()
        if row is None:
            raise NotFound("index pointer", self.name)
        return row

    def ensure(self, live_models: dict[str, str]) -> Pointer:
        """Create the row for the default collection, recording the models its vectors come
        from (an installation's first re-index check); an existing row is left alone."""
        self.session.execute(
            pg_insert(IndexPointer)
            .values(
                name=self.name, live_collection=self.default_collection, live_models=live_models
            )
            .on_conflict_do_nothing(index_elements=[IndexPointer.name])
        )
        return self.read()

    def begin_build(self, collection: str, models: dict[str, str]) -> Pointer:
        """Claim the index for one build. A second build while one is recorded (running,
        canceling, or left by a dead worker, which the next run resumes) is refused."""
        claimed = self.session.execute(
            update(IndexPointer)
            .where(IndexPointer.name == self.name, IndexPointer.building_collection.is_(None))
            .values(
                building_collection=collection,
                building_models=models,
                building_state=BUILDING,
                building_started_at=datetime.now(UTC),
                building_done=0,
                building_total=0,
                generation=IndexPointer.generation + 1,
            )
        )
        if getattr(claimed, "rowcount", 0) != 1:
            current = self.read()
            building = current.building.collection if current.building else "?"
            raise Conflict(
                f"a re-index of {self.name} is already in progress (building {building})",
                code="reindex.in_progress",
            )
        return self.read()

    def report(self, report: dict[str, Any]) -> None:
        self.session.execute(
            update(IndexPointer).where(IndexPointer.name == self.name).values(last_report=report)
        )

    def progress(self, done: int, total: int) -> None:
        self.session.execute(
            update(IndexPointer)
            .where(IndexPointer.name == self.name)
            .values(building_done=done, building_total=total)
        )

    def request_cancel(self) -> Pointer:
        row = self._locked()
        if row.building_collection is None:
            raise Conflict("no re-index is in progress", code="reindex.not_running")
        row.building_state = CANCELING
        row.generation += 1  # ingest stops writing to the partial collection
        return _pointer(row)

    def clear_building(self, report: dict[str, Any] | None = None) -> None:
        row = self._locked()
        if report is not None:
            row.last_report = report
        if row.building_collection is None:
            return
        row.building_collection = None
        row.building_models = None
        row.building_state = None
        row.building_started_at = None
        row.generation += 1

    def switch(
        self, keep_previous: timedelta, report: dict[str, Any]
    ) -> tuple[Pointer, str | None]:
        """Make the built collection live in one update; the live one becomes previous,
        kept for ``keep_previous``. Returns the new pointer and the collection that was
        previous until now, for the caller to drop after the commit."""
        row = self._locked()
        if row.building_collection is None or row.building_state != BUILDING:
            raise Conflict("no finished re-index to switch to", code="reindex.not_running")
        replaced = row.previous_collection
        row.previous_collection, row.previous_models = row.live_collection, row.live_models
        row.previous_until = datetime.now(UTC) + keep_previous
        row.live_collection = row.building_collection
        row.live_models = dict(row.building_models or {})
        row.building_collection = None
        row.building_models = None
        row.building_state = None
        row.building_started_at = None
        row.generation += 1
        row.last_report = report
        return _pointer(row), replaced

    def rollback(self) -> Pointer:
        """Serve the previous collection again, in one update; the one it replaces becomes
        previous (so a rollback can itself be undone within the same window)."""
        row = self._locked()
        if row.previous_collection is None:
            raise Conflict(
                "there is no previous index to roll back to (never switched, or its rollback "
                "window ended and it was dropped)",
                code="reindex.nothing_to_roll_back",
            )
        if row.building_collection is not None:
            raise Conflict("a re-index is in progress: cancel it first", code="reindex.in_progress")
        (
            row.live_collection,
            row.live_models,
            row.previous_collection,
            row.previous_models,
        ) = (
            row.previous_collection,
            dict(row.previous_models or {}),
            row.live_collection,
            row.live_models,
        )
        row.generation += 1
        return _pointer(row)

    def after_restore(self, collection: str, *, vectors_restored: bool) -> None:
        """The pointer as a restore left it (it came back with PostgreSQL): its vectors are
        in ``collection`` now, with the models the row records (the backup exported the
        collection that was live); a collection being built or kept for a rollback is not
        in a backup, so both are forgotten. Without vectors (a restore that re-ingests),
        the row goes: the first ingest records it again."""
        row = self.session.get(IndexPointer, self.name)
        if row is None:
            return
        if not vectors_restored:  # the re-ingest recreates the live collection it names
            collection = row.live_collection
        if (
            row.live_collection == collection
            and row.building_collection is None
            and row.previous_collection is None
        ):
            return  # it already says what the restore left
        row.live_collection = collection
        row.building_collection = row.building_models = row.building_state = None
        row.building_started_at = None
        row.previous_collection = row.previous_models = row.previous_until = None
        row.generation += 1

    def forget_previous(self) -> str | None:
        """Clear the previous collection (its window ended); returns its name to drop."""
        row = self._locked()
        name = row.previous_collection
        row.previous_collection = None
        row.previous_models = None
        row.previous_until = None
        row.generation += 1
        return name


def recorded_models(index: ChunkIndex) -> dict[str, str]:
    """The model versions the points of a collection say they were embedded with."""
    for page in index.points(batch=16):
        for _, payload in page:
            found = payload.get("embed_models")
            if isinstance(found, dict) and found:
                return {str(a): str(ref).replace("@", "/", 1) for a, ref in found.items()}
    return {}


class PointerCache:
    """The pointer as this process last read it, read again every ``ttl`` seconds or at
    once after ``invalidate`` (a switch made by this process)."""

    def __init__(
        self, session_factory: sessionmaker[Session], default_collection: str, ttl: float
    ) -> None:
        self.session_factory = session_factory
        self.default_collection = default_collection
        self.ttl = ttl
        self._lock = threading.Lock()
        self._value: Pointer | None = None
        self._read_at = 0.0

    def get(self) -> Pointer:
        now = time.monotonic()
        value = self._value
        if value is not None and now - self._read_at < self.ttl:
            return value
        with self._lock:
            if self._value is not None and time.monotonic() - self._read_at < self.ttl:
                return self._value
            with transaction(self.session_factory) as session:
                fresh = IndexPointers(session, self.default_collection).read()
            self._value, self._read_at = fresh, time.monotonic()
            return fresh

    def invalidate(self) -> None:
        with self._lock:
            self._value = None
