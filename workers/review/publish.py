"""Publishing review results through a transactional outbox.

The handler writes a ``review_deliveries`` row in the transaction that stores the result, so a
result is never stored without its delivery or delivered without being stored. Deliveries are
sent right after that commit and, when that fails, by every worker's reaper (``deliver_due``):
each round tries the publish URL, then the fallback URL; every attempt is recorded in the row's
``log``; a round that fails everywhere waits ``publish_backoff_seconds`` doubling, up to
``publish_max_attempts`` rounds, then the delivery is ``failed`` (visible in the review).

A row is locked (``FOR UPDATE SKIP LOCKED``) while it is sent, so two workers never send the
same delivery at once. A worker that dies after the receiver answered but before its commit
sends it again later with the same ``idempotency_key`` (in the payload and the
``Idempotency-Key`` header): receivers drop what they already have.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from haven.db.engine import transaction
from haven.db.tables import ReviewDelivery
from haven.review_settings import ReviewSettings

log = structlog.get_logger("haven.review.publish")


def enqueue(
    session: Session, tenant_id: uuid.UUID, review_id: uuid.UUID, payload: dict[str, Any]
) -> ReviewDelivery:
    key = f"review:{review_id}:{uuid.uuid4().hex[:12]}"
    delivery = ReviewDelivery(
        tenant_id=tenant_id,
        review_id=review_id,
        idempotency_key=key,
        payload={**payload, "idempotency_key": key},
        state="pending",
    )
    session.add(delivery)
    session.flush()
    return delivery


def _targets(settings: ReviewSettings) -> list[tuple[str, str]]:
    targets = []
    if settings.publish_url is not None:
        targets.append(("primary", str(settings.publish_url)))
    if settings.publish_fallback_url is not None:
        targets.append(("fallback", str(settings.publish_fallback_url)))
    return targets


def _send(client: httpx.Client, delivery: ReviewDelivery, url: str) -> tuple[bool, str]:
    try:
        response = client.post(
            url,
            json=delivery.payload,
            headers={"Idempotency-Key": delivery.idempotency_key},
        )
    except httpx.HTTPError as exc:
        return False, f"{type(exc).__name__}"
    if 200 <= response.status_code < 300:
        return True, str(response.status_code)
    return False, f"HTTP {response.status_code}"


def deliver_due(
    session_factory: sessionmaker[Session],
    settings: ReviewSettings,
    *,
    only: uuid.UUID | None = None,
    limit: int = 20,
) -> dict[str, int]:
    """Send the deliveries that are due (or just ``only``); counts of what happened."""
    targets = _targets(settings)
    counts = {"delivered": 0, "retrying": 0, "failed": 0}
    if not targets:
        return counts
    now = datetime.now(UTC)
    with (
        transaction(session_factory) as session,
        httpx.Client(timeout=settings.publish_timeout_seconds) as client,
    ):
        stmt = select(ReviewDelivery).where(ReviewDelivery.state == "pending")
        if only is not None:
            stmt = stmt.where(ReviewDelivery.id == only)
        else:
            stmt = stmt.where(ReviewDelivery.next_attempt_at <= now)
        stmt = (
            stmt.order_by(ReviewDelivery.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        for delivery in session.execute(stmt).scalars():
            attempts = list(delivery.log or [])
            delivered = False
            for name, url in targets:
                ok, outcome = _send(client, delivery, url)
                attempts.append(
                    {"at": datetime.now(UTC).isoformat(), "target": name, "outcome": outcome}
                )
                if ok:
                    delivery.state = "delivered"
                    delivery.delivered_to = name
                    delivery.delivered_at = datetime.now(UTC)
                    delivered = True
                    break
                delivery.last_error = f"{name}: {outcome}"[:500]
            delivery.attempts += 1
            delivery.log = attempts[-50:]
            if delivered:
                counts["delivered"] += 1
                log.info(
                    "review.delivered", review_id=str(delivery.review_id), to=delivery.delivered_to
                )
            elif delivery.attempts >= settings.publish_max_attempts:
                delivery.state = "failed"
                counts["failed"] += 1
                log.warning("review.delivery_failed", review_id=str(delivery.review_id))
            else:
                pause = min(
                    settings.publish_backoff_seconds * 2 ** (delivery.attempts - 1),
                    settings.publish_backoff_max_seconds,
                )
                delivery.next_attempt_at = now + timedelta(seconds=pause)
                counts["retrying"] += 1
    return counts
