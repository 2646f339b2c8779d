"""Every job kind reaches a worker: its task is routed to a declared queue that dead-letters,
and a worker consumes exactly the queues it is configured for."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from haven.db.tables import JobKind
from haven.queueing import (
    DEAD_EXCHANGE,
    QUEUES,
    create_celery,
    dead_queue,
    queue_of,
    task_for,
    task_queues,
)
from workers.app import create_worker_app
from workers.settings import WorkerSettings


def test_every_job_kind_is_routed_to_a_declared_queue_that_dead_letters() -> None:
    declared = {queue.name: queue for queue in task_queues()}
    routes = create_celery(WorkerSettings()).conf.task_routes
    for kind in JobKind:
        task = task_for(kind.value)
        queue = queue_of(task)
        assert queue in declared, kind
        assert routes[f"{queue}.*"]["queue"] == queue
        assert declared[queue].queue_arguments["x-dead-letter-exchange"] == DEAD_EXCHANGE.name
    assert {b.routing_key for b in dead_queue().bindings} == set(QUEUES)


def test_a_worker_consumes_only_its_configured_queues(tmp_path: Path) -> None:
    settings = WorkerSettings(
        worker_queues="ingest,maintenance",  # type: ignore[arg-type]
        beat_schedule_path=tmp_path / "beat",
    )
    app = create_worker_app(settings)
    assert set(app.amqp.queues.consume_from) == {"ingest", "maintenance"}
    assert {task_for("ingest"), task_for("probe")} <= set(app.tasks)


def test_a_worker_consumes_every_queue_by_default(tmp_path: Path) -> None:
    app = create_worker_app(WorkerSettings(beat_schedule_path=tmp_path / "beat"))
    assert set(app.amqp.queues.consume_from) == set(QUEUES)


def test_an_unknown_queue_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="HAVEN_WORKER_QUEUES"):
        WorkerSettings(worker_queues="ingest,reviews")  # type: ignore[arg-type]
