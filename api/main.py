"""The API application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api.admin.router import router as admin_router
from api.analyses.router import router as analyses_router
from api.auth.router import router as auth_router
from api.chat.router import router as chat_router
from api.documents.router import router as documents_router
from api.errors import install_error_handlers
from api.jobs.router import router as jobs_router
from api.maintenance.router import router as maintenance_router
from api.openai.router import router as openai_router
from api.ops import router as ops_router
from api.quotas import RateLimitHeaders
from api.read_only import ReadOnlyMiddleware
from api.read_only_router import router as read_only_router
from api.reviews.router import router as reviews_router
from api.runs.router import router as runs_router
from api.runtime import ApiRuntime
from api.search.router import router as search_router
from api.settings import ApiSettings
from api.usage.router import router as usage_router
from haven import __version__
from haven.body_limit import BodyLimitMiddleware
from haven.queueing import declare_topology
from haven.storage import ensure_bucket
from haven.telemetry import RequestContextMiddleware, configure_service_logging, log
from haven.tracing import configure_tracing, instrument_app
from haven.vectors import make_qdrant


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings()
    configure_service_logging(settings)
    # Before the runtime opens its clients, so that their libraries are instrumented.
    configure_tracing("api", settings.otel_endpoint, version=__version__)
    runtime = ApiRuntime.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime.qdrant = make_qdrant(settings)
        try:
            ensure_bucket(runtime.s3, settings.s3_bucket)
        except Exception as exc:  # the API still starts; /readyz reports the object store
            log.warning("api.start.bucket_unavailable", error=str(exc))
        try:
            declare_topology(runtime.celery)
        except Exception as exc:  # the API still starts; /readyz reports the broker
            log.warning("api.start.broker_unavailable", error=str(exc))
        runtime.quotas.start(runtime.in_auth_thread)
        log.info("api.start", version=__version__, env=settings.env)
        yield
        await runtime.aclose()

    app = FastAPI(title="Haven API", version=__version__, lifespan=lifespan)
    app.state.runtime = runtime
    install_error_handlers(app)
    # Every body but a multipart upload's is refused with 413 past this size, before it is
    # parsed (uploads have their own limit, below).
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_json_body_bytes)
    # Read-only mode refuses writes before their body is read (inside CORS, so a browser
    # can read the reason).
    app.add_middleware(
        ReadOnlyMiddleware,
        switch=runtime.read_only,
        retry_after=settings.read_only_retry_after_seconds,
    )
    app.state.ops_metrics = runtime.ops
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID"],
        )
    # The RateLimit-* headers of the caller's rate decision, on every response.
    app.add_middleware(RateLimitHeaders)
    app.add_middleware(RequestContextMiddleware, metrics=runtime.metrics)
    app.include_router(ops_router)
    app.include_router(auth_router)
    app.include_router(admin_router)
    # Multipart bodies above the limit are refused with 413 before they are parsed.
    app.include_router(documents_router, max_body_size=settings.max_upload_bytes + 64 * 1024)
    app.include_router(jobs_router)
    app.include_router(reviews_router)
    app.include_router(search_router)
    app.include_router(chat_router)
    app.include_router(openai_router)
    # code runs in the sandbox, who may run code, the common-error registry
    app.include_router(runs_router)
    app.include_router(read_only_router)
    instrument_app(app)
    # analyses (#18)
    app.include_router(analyses_router)
    app.include_router(usage_router)
    # nightly maintenance: tasks, schedule, run now (platform admins)
    app.include_router(maintenance_router)
    return app
