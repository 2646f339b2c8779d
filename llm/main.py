"""The generation service's application factory.

The model loads in the background after start-up, so ``/healthz`` answers at once and
``/readyz`` reports 503 until the model is downloaded, verified and loaded (or says why it
never will be: a file that failed its checksum is named, and that model is never served).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from haven import __version__
from haven.body_limit import BodyLimitMiddleware
from haven.contracts.openai import error_body
from haven.telemetry import RequestContextMiddleware, RequestMetrics, configure_service_logging, log
from haven.tracing import configure_tracing, instrument_app
from llm.errors import install_error_handlers
from llm.metrics import LlmMetrics
from llm.model import load_model
from llm.routes import LlmRuntime, router
from llm.service import LlmService
from llm.settings import LlmSettings
from models.loader import ModelIntegrityError


def create_app(settings: LlmSettings | None = None) -> FastAPI:
    settings = settings or LlmSettings()
    configure_service_logging(settings)
    configure_tracing("llm", settings.otel_endpoint, version=__version__)
    registry = CollectorRegistry()
    service = LlmService(settings, LlmMetrics(registry))
    runtime = LlmRuntime(service=service, registry=registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("llm.start", version=__version__, env=settings.env, alias=settings.llm_alias)
        loading = asyncio.create_task(_load(service))
        try:
            yield
        finally:
            loading.cancel()
            with suppress(asyncio.CancelledError):
                await loading
            service.close()

    app = FastAPI(title="Haven LLM", version=__version__, lifespan=lifespan)
    app.state.runtime = runtime
    install_error_handlers(app, settings.llm_retry_after_seconds)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.llm_max_body_bytes, body=_too_large)
    app.add_middleware(RequestContextMiddleware, metrics=RequestMetrics("llm", registry))
    app.include_router(router)
    instrument_app(app)
    return app


def _too_large(limit: int) -> dict[str, Any]:
    return error_body(
        f"the request body is over the limit of {limit} bytes",
        type_="invalid_request_error",
        code="request_too_large",
        limit=limit,
    )


async def _load(service: LlmService) -> None:
    settings = service.settings
    try:
        # Blocking work (download, sha256, mmap) off the event loop: /healthz keeps answering.
        model = await asyncio.to_thread(load_model, settings)
    except ModelIntegrityError as exc:
        log.error(
            "llm.model.integrity_failed", alias=settings.llm_alias, file=exc.path, error=str(exc)
        )
        service.mark_failed(f"model failed verification: {exc}", failed_file=exc.path)
    except Exception as exc:  # the service stays up and /readyz says why it is not ready
        log.exception("llm.model.load_failed", alias=settings.llm_alias)
        service.mark_failed(f"model failed to load: {type(exc).__name__}: {exc}")
    else:
        service.mark_loaded(model)
