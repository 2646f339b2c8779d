"""OpenTelemetry tracing, switched on by ``HAVEN_OTEL_ENDPOINT``.

With the endpoint set, a process exports its spans over OTLP/HTTP (protobuf) to
``<endpoint>/v1/traces`` and instruments FastAPI (its own app), httpx (API → emb, llm),
SQLAlchemy, Celery (the trace context rides in each task message's headers, so a job's spans
continue the request that created it) and Redis. A few spans of Haven's own mark the steps
that no library sees: the vector store's search and upserts and the ingest steps.

Without it nothing of OpenTelemetry is imported or called: ``span()`` is a null context
manager and no library is patched, so tracing costs nothing when it is off.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import structlog

log = structlog.get_logger("haven.tracing")

_tracer: Any = None
_lock = threading.Lock()
_instrumented_apps: set[int] = set()
# Requests to these paths make no trace (probes and scrapes, many a minute).
EXCLUDED_URLS = "healthz,readyz,metrics"


def enabled() -> bool:
    return _tracer is not None


def configure_tracing(service: str, endpoint: str | None, *, version: str = "dev") -> bool:
    """Set up the process's tracer provider and instrument the libraries, once per process
    (the first caller names the service). Returns whether tracing is on."""
    global _tracer
    if not endpoint:
        return False
    with _lock:
        if _tracer is not None:
            return True
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
        from opentelemetry.instrumentation.redis import RedisInstrumentor
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(
            resource=Resource.create({"service.name": service, "service.version": version})
        )
        exporter = OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces", timeout=5)
        provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        HTTPXClientInstrumentor().instrument(tracer_provider=provider)
        SQLAlchemyInstrumentor().instrument(tracer_provider=provider)
        CeleryInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
        RedisInstrumentor().instrument(tracer_provider=provider)
        _tracer = trace.get_tracer("haven")
        log.info("tracing.on", service=service, endpoint=endpoint)
        return True


def instrument_app(app: Any) -> None:
    """Trace every request of a FastAPI app (no-op while tracing is off)."""
    if _tracer is None or id(app) in _instrumented_apps:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, excluded_urls=EXCLUDED_URLS)
    _instrumented_apps.add(id(app))


def span(name: str, **attributes: Any) -> AbstractContextManager[Any]:
    """A span of Haven's own around a step (a null context while tracing is off)."""
    if _tracer is None:
        return nullcontext()
    tracer: Any = _tracer
    return tracer.start_as_current_span(name, attributes=attributes)  # type: ignore[no-any-return]


def flush(timeout_seconds: float = 5.0) -> None:
    """Send what is buffered (at shutdown)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    provider: Any = trace.get_tracer_provider()
    if hasattr(provider, "force_flush"):
        provider.force_flush(int(timeout_seconds * 1000))
