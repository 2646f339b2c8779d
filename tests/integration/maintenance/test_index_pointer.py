"""The index pointer's one-row switches on real PostgreSQL: one build at a time, a switch and
a rollback as single updates, and what a restore leaves (a backup holds only the live
collection's vectors)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from haven.db.engine import make_engine, make_session_factory, transaction
from haven.db.tables import IndexPointer
from haven.errors import Conflict
from haven.index_pointer import IndexPointers
from haven.settings import StoreSettings

BASE = "haven_chunks"


@pytest.fixture()
def factory(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(StoreSettings(env="test", database_url=database_url))
    factory = make_session_factory(engine)
    with transaction(factory) as session:
        session.execute(delete(IndexPointer))
    yield factory
    engine.dispose()


def pointers(session: Session) -> IndexPointers:
    return IndexPointers(session, BASE)


def test_one_build_at_a_time_switch_and_rollback_are_one_step(
    factory: sessionmaker[Session],
) -> None:
    with transaction(factory) as session:
        assert pointers(session).ensure({"minilm": "a/1"}).live.collection == BASE
        pointers(session).begin_build("haven_chunks_r1", {"minilm": "b/1"})
    with transaction(factory) as session, pytest.raises(Conflict, match="already in progress"):
        pointers(session).begin_build("haven_chunks_r2", {"minilm": "b/1"})
    with transaction(factory) as session:
        during = pointers(session).read()
        assert [t.collection for t in during.writes] == [BASE, "haven_chunks_r1"]
        switched, replaced = pointers(session).switch(timedelta(hours=1), {"passed": True})
    assert replaced is None
    assert (switched.live.collection, switched.live.models) == (
        "haven_chunks_r1",
        {"minilm": "b/1"},
    )
    assert switched.previous is not None and switched.previous.collection == BASE
    # Uploads after the switch still reach the previous collection, for a rollback.
    assert [t.collection for t in switched.writes] == ["haven_chunks_r1", BASE]
    with transaction(factory) as session:
        back = pointers(session).rollback()
    assert (back.live.collection, back.live.models) == (BASE, {"minilm": "a/1"})
    assert back.previous is not None and back.previous.collection == "haven_chunks_r1"
    assert back.generation > switched.generation


def test_a_restore_points_the_index_at_the_restored_collection_and_forgets_the_others(
    factory: sessionmaker[Session],
) -> None:
    with transaction(factory) as session:
        pointers(session).ensure({"minilm": "a/1"})
        pointers(session).begin_build("haven_chunks_r1", {"minilm": "b/1"})
        pointers(session).switch(timedelta(hours=1), {})
        pointers(session).begin_build("haven_chunks_r2", {"minilm": "c/1"})
    with transaction(factory) as session:
        pointers(session).after_restore(BASE, vectors_restored=True)
    with transaction(factory) as session:
        restored = pointers(session).read()
    # The vectors of the collection that was live (model b) are in the configured one now.
    assert (restored.live.collection, restored.live.models) == (BASE, {"minilm": "b/1"})
    assert restored.building is None and restored.previous is None
    with transaction(factory) as session:
        pointers(session).begin_build("haven_chunks_r3", {"minilm": "c/1"})
        pointers(session).after_restore(BASE, vectors_restored=False)
    with transaction(factory) as session:
        rebuilt = pointers(session).read()
    # Without vectors, the ingests re-create the live collection the row names.
    assert (rebuilt.live.collection, rebuilt.building) == (BASE, None)
