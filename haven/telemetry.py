"""JSON logs carrying the request and tenant ids, and Prometheus request metrics.

``request_id`` and ``tenant_id`` live in contextvars (structlog's), so every log line of a
request carries them, and workers restore them from the task's headers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from logging.handlers import TimedRotatingFileHandler
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import structlog
from fastapi.routing import iter_route_contexts
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import compile_path
from starlette.types import ASGIApp

REQUEST_ID_HEADER = "X-Request-ID"

log = structlog.get_logger("haven")


def configure_logging(
    level: str = "INFO",
    json_logs: bool = True,
    *,
    log_file: Path | None = None,
    rotate_days: int = 3,
    retention_files: int = 10,
    secrets: Iterable[str] = (),
) -> None:
    """Route stdlib and structlog records through one JSON (or console) renderer, to stdout
    and, with ``log_file``, to that file as JSON lines, rotated every ``rotate_days`` days
    with ``retention_files`` old files kept. Any of ``secrets`` that reaches a line anyway
    (an exception quoting a URL, a library's debug line) is masked before it is written."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    masks = sorted({secret for secret in secrets if len(secret) >= MIN_SECRET_LENGTH}, key=len)[
        ::-1
    ]

    def formatter_for(final: Any) -> logging.Formatter:
        return structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _masked(final, masks) if masks else final,
            ],
        )

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter_for(renderer))
    handlers: list[logging.Handler] = [handler]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        rotating = TimedRotatingFileHandler(
            log_file,
            when="D",
            interval=rotate_days,
            backupCount=retention_files,
            encoding="utf-8",
            utc=True,
        )
        rotating.setFormatter(formatter_for(structlog.processors.JSONRenderer()))
        handlers.append(rotating)
    root = logging.getLogger()
    for old_handler in root.handlers:
        if isinstance(old_handler, TimedRotatingFileHandler):
            old_handler.close()
    root.handlers[:] = handlers
    root.setLevel(level.upper())
    # uvicorn's access log is replaced by our own request log line.
    logging.getLogger("uvicorn.access").disabled = True


# Shorter values (a development "guest") would mask ordinary words.
MIN_SECRET_LENGTH = 8


def _masked(renderer: Any, secrets: list[str]) -> Any:
    def render(logger: Any, name: str, event: Any) -> Any:
        line = renderer(logger, name, event)
        if isinstance(line, str):
            for secret in secrets:
                if secret in line:
                    line = line.replace(secret, "***")
        return line

    return render


def settings_secrets(settings: Any) -> list[str]:
    """The secret values in a service's settings: every ``SecretStr``, each JWT key, and the
    password inside a connection URL."""
    found: list[str] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name, None)
        if not isinstance(value, SecretStr):
            continue
        secret = value.get_secret_value()
        found.append(secret)
        if "://" in secret:
            password = urlsplit(secret).password
            if password:  # as written in the URL, and as the driver sends it
                found.extend({password, unquote(password), quote(unquote(password), safe="")})
        if name == "jwt_keys":
            with contextlib.suppress(ValueError, AttributeError):
                found.extend(str(v) for v in json.loads(secret).values())
    return found


def configure_service_logging(settings: Any) -> None:
    """``configure_logging`` from a service's settings (``HAVEN_LOG_*``), its secrets masked."""
    configure_logging(
        settings.log_level,
        settings.log_json,
        log_file=settings.log_file,
        rotate_days=settings.log_rotate_days,
        retention_files=settings.log_retention_files,
        secrets=settings_secrets(settings),
    )


class RequestMetrics:
    """Request count and latency by route template and status, in the app's own registry."""

    def __init__(self, service: str, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "haven_http_requests_total",
            "HTTP requests",
            ["service", "method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "haven_http_request_duration_seconds",
            "HTTP request latency",
            ["service", "method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )
        self.service = service


@dataclass(frozen=True, slots=True)
class HttpRoute:
    path: str  # the template, e.g. /api/v1/admin/users/{user_id}
    methods: frozenset[str]
    regex: re.Pattern[str]


def http_routes(app: Any) -> list[HttpRoute]:
    """Every HTTP route of the app with its full path template, routers included."""
    routes = []
    for context in iter_route_contexts(app.routes):
        path = context.path_format or context.path
        methods = getattr(context.original_route, "methods", None)
        if path and methods:
            regex, _, _ = compile_path(path)
            routes.append(HttpRoute(path, frozenset(methods), regex))
    return routes


def route_template(routes: list[HttpRoute], method: str, path: str) -> str:
    """The matched route's path template, so metrics do not explode with ids."""
    for route in routes:
        if route.regex.match(path) and method in route.methods:
            return route.path
    return "unmatched"


class RequestContextMiddleware:
    """Takes or makes the request id, returns it in the response, logs one line per request
    and records the request metrics."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._routes: list[HttpRoute] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        request_id = incoming if _valid_request_id(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status_holder = {"status": 500}

        async def send_with_id(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.lower().encode(), request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            if self._routes is None:  # routes are final once the app serves requests
                self._routes = http_routes(scope["app"])
            route = route_template(self._routes, request.method, request.url.path)
            status = status_holder["status"]
            self.metrics.requests.labels(
                self.metrics.service, request.method, route, str(status)
            ).inc()
            self.metrics.latency.labels(self.metrics.service, request.method, route).observe(
                elapsed
            )
            if route not in {"/healthz", "/metrics"}:
                log.info(
                    "http.request",
                    tenant_id=scope["state"].get("tenant_id"),
                    method=request.method,
                    route=route,
                    status=status,
                    duration_ms=round(elapsed * 1000, 1),
                )


def _valid_request_id(value: str) -> bool:
    return 0 < len(value) <= 64 and all(c.isalnum() or c in "-_." for c in value)


Handler = Callable[[Request], Awaitable[Response]]
