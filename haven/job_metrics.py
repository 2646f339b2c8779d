"""Gauges of the job pipeline, computed when Prometheus scrapes: messages waiting per Celery
queue (from RabbitMQ) and jobs stuck in ``running`` (from PostgreSQL: no heartbeat for two
leases, the reaper's own threshold). The API exports them, so every replica reports the same
values and the alert rules take the max.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import structlog
from celery import Celery
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from haven.db.engine import transaction
from haven.jobs import JobStore
from haven.queueing import DEAD_QUEUE_NAME, QUEUES

log = structlog.get_logger("haven.metrics")


class JobPipelineCollector(Collector):
    def __init__(
        self, celery: Celery, session_factory: sessionmaker[Session], lease_seconds: int
    ) -> None:
        self.celery = celery
        self.session_factory = session_factory
        self.stuck_after = timedelta(seconds=2 * lease_seconds)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queues = GaugeMetricFamily(
            "haven_queue_length", "Messages waiting in each Celery queue", labels=["queue"]
        )
        try:
            with self.celery.connection_for_read() as conn:
                conn.ensure_connection(max_retries=1)
                channel = conn.default_channel
                for name in (*QUEUES, DEAD_QUEUE_NAME):
                    declared = channel.queue_declare(name, passive=True)
                    queues.add_metric([name], declared.message_count)
        except Exception as exc:  # the broker is down: /readyz says so; no made-up zeros
            log.warning("metrics.queue_length_unavailable", error=str(exc))
        else:
            yield queues

        try:
            with transaction(self.session_factory) as session:
                stuck = JobStore(session).count_stale_running(self.stuck_after)
        except Exception as exc:
            log.warning("metrics.jobs_stuck_unavailable", error=str(exc))
        else:
            yield GaugeMetricFamily(
                "haven_jobs_stuck", "Jobs in running whose worker stopped heartbeating", stuck
            )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())
