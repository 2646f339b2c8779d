"""Moving dead-lettered task messages from RabbitMQ into PostgreSQL.

A message is acknowledged only after its row is committed, and the row is keyed on the
message id, so a crash between the two never loses a dead letter nor lists it twice.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import structlog
from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from haven.db.engine import transaction
from haven.db.repositories import JobStore
from haven.queueing import DEAD_QUEUE_NAME, dead_queue

log = structlog.get_logger("haven.dead_letters")


def _job_id(body: Any) -> uuid.UUID | None:
    # Celery's message protocol 2: body = [args, kwargs, embed]; our tasks take the job id.
    try:
        return uuid.UUID(str(body[0][0]))
    except (IndexError, KeyError, TypeError, ValueError):
        return None


def _reason(headers: dict[str, Any], last_error: str | None, message: str | None) -> str:
    """The job's own reason when it has one (``worker.lost: gave up after 3 attempts``),
    else what the broker says happened to the message."""
    if last_error:
        return f"{last_error}: {message}" if message else last_error
    deaths = headers.get("x-death") or []
    if deaths:
        first = deaths[0]
        return f"{first.get('reason', 'rejected')} from queue {first.get('queue', '?')}"
    return "rejected"


def drain_dead_letters(app: Celery, factory: sessionmaker[Session], *, limit: int = 500) -> int:
    moved = 0
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        dead_queue().bind(channel).declare()
        queue = dead_queue().bind(channel)
        for _ in range(limit):
            message = queue.get(no_ack=False, accept=["json"])
            if message is None:
                break
            headers = dict(message.headers or {})
            try:
                body = message.decode()
            except (ValueError, TypeError, json.JSONDecodeError):
                body = None
            job_id = _job_id(body)
            message_id = str(
                headers.get("id") or message.properties.get("correlation_id") or uuid.uuid4()
            )
            with transaction(factory) as session:
                job = JobStore(session).get(job_id) if job_id else None
                if job is None:
                    log.warning("dead_letter.orphan", message_id=message_id, queue=DEAD_QUEUE_NAME)
                else:
                    deaths = headers.get("x-death") or [{}]
                    JobStore(session).add_dead_letter(
                        job,
                        message_id=message_id,
                        task=str(headers.get("task", "unknown")),
                        queue=str(deaths[0].get("queue", "unknown")),
                        reason=_reason(headers, job.last_error, job.last_error_message),
                        body={"args": body[0] if body else None},
                    )
            message.ack()
            moved += 1
    if moved:
        log.info("dead_letter.drained", count=moved)
    return moved
