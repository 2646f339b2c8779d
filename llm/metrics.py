"""Prometheus metrics of the generation service, in the app's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class LlmMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.queue_depth = Gauge(
            "haven_llm_queue_depth", "Requests waiting for a slot", registry=registry
        )
        self.active_slots = Gauge(
            "haven_llm_active_slots", "Slots generating right now", registry=registry
        )
        self.slots = Gauge("haven_llm_slots", "Slots configured", registry=registry)
        self.prompt_tokens = Counter(
            "haven_llm_prompt_tokens", "Prompt tokens evaluated", registry=registry
        )
        self.tokens_generated = Counter(
            "haven_llm_tokens_generated", "Completion tokens generated", registry=registry
        )
        self.generations = Counter(
            "haven_llm_generations",
            "Generations by how they ended (stop, length, cancelled, timeout, error)",
            ["outcome"],
            registry=registry,
        )
        self.rejections = Counter(
            "haven_llm_rejections",
            "Requests refused before generating (queue_full, queue_timeout, not_ready)",
            ["reason"],
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "haven_llm_time_to_first_token_seconds",
            "From the request's arrival to its first generated token",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )
        self.tokens_per_second = Histogram(
            "haven_llm_tokens_per_second",
            "Decode speed of one generation, after its first token",
            buckets=(1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500, 1000, 5000),
            registry=registry,
        )
