"""The embedding service's Prometheus metrics, in the app's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from haven.telemetry import RequestMetrics

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256)


class EmbMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http = RequestMetrics("emb", self.registry)
        self.batch_size = Histogram(
            "haven_emb_batch_size",
            "Texts per model call",
            ["alias"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "haven_emb_batch_duration_seconds",
            "Duration of one model call",
            ["alias"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "haven_emb_queue_depth",
            "Texts waiting for a model call",
            ["alias"],
            registry=self.registry,
        )
        self.rejections = Counter(
            "haven_emb_rejections_total",
            "Requests refused at once because the queue was full",
            ["alias"],
            registry=self.registry,
        )
        self.texts = Counter(
            "haven_emb_texts_total", "Texts embedded", ["alias"], registry=self.registry
        )
        self.truncated = Counter(
            "haven_emb_truncated_total",
            "Texts longer than the model's window, embedded truncated",
            ["alias"],
            registry=self.registry,
        )
        self.ready = Gauge(
            "haven_emb_ready", "1 when every model is loaded and verified", registry=self.registry
        )
