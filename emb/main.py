"""The embedding service's application factory: ``uvicorn --factory emb.main:create_app``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from emb.routes import router
from emb.runtime import EmbRuntime
from emb.settings import EmbSettings
from haven import __version__
from haven.telemetry import RequestContextMiddleware, configure_service_logging, log
from haven.tracing import configure_tracing, instrument_app


def create_app(settings: EmbSettings | None = None) -> FastAPI:
    settings = settings or EmbSettings()
    configure_service_logging(settings)
    configure_tracing("emb", settings.otel_endpoint, version=__version__)
    runtime = EmbRuntime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("emb.start", version=__version__, aliases=settings.emb_aliases)
        # Models load in the background: the process serves /healthz and explains in
        # /readyz what it is waiting for (or why it failed) instead of crash-looping.
        loading = asyncio.create_task(runtime.load(), name="emb-load")
        yield
        loading.cancel()
        await asyncio.gather(loading, return_exceptions=True)
        await runtime.close()

    app = FastAPI(title="Haven embeddings", version=__version__, lifespan=lifespan)
    app.state.runtime = runtime
    app.add_middleware(RequestContextMiddleware, metrics=runtime.metrics.http)
    app.include_router(router)
    instrument_app(app)
    return app
