"""Error responses, mapped once: services raise ``haven.errors`` domain errors and this module
turns each into HTTP. The body is JSON with a ``detail`` for people and a stable ``code``; never
a stack trace or a dependency's raw exception text (that goes to the log, with the request id).
"""

from __future__ import annotations

import math

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from haven import errors

log = structlog.get_logger("haven.api")

STATUS: dict[type[errors.DomainError], int] = {
    errors.BadRequest: 400,
    errors.NotFound: 404,
    errors.Invalid: 422,
    errors.UnsupportedMediaType: 415,
    errors.Conflict: 409,
    errors.Gone: 410,
    errors.Unauthenticated: 401,
    errors.Forbidden: 403,
    errors.TooLarge: 413,
    errors.LimitExceeded: 429,
    errors.Unavailable: 503,
    errors.UpstreamFailed: 502,
}


def status_for(exc: errors.DomainError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


def retry_after_header(seconds: float | None) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds or 1)))}


def error_response(exc: errors.DomainError) -> JSONResponse:
    """The HTTP answer for a domain error (also used by streaming routes before they start)."""
    status = status_for(exc)
    body: dict[str, object] = {"detail": exc.message, "code": exc.code}
    body.update({key: value for key, value in exc.details.items() if value is not None})
    headers: dict[str, str] = {}
    if isinstance(exc, errors.LimitExceeded | errors.Unavailable):
        headers = retry_after_header(exc.retry_after)
    elif isinstance(exc, errors.Unauthenticated):
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.DomainError)
    async def domain_error(_: Request, exc: errors.DomainError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors_ = [
            {
                "field": ".".join(str(part) for part in err.get("loc", ())),
                "message": err.get("msg", "invalid"),
                "type": err.get("type", "value_error"),
            }
            for err in exc.errors()
        ]
        return JSONResponse(
            {"detail": "invalid request", "code": "invalid", "errors": errors_}, status_code=422
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("http.unhandled_error", path=request.url.path)
        request_id = getattr(request.state, "request_id", None)
        return JSONResponse(
            {"detail": "internal error", "code": "internal", "request_id": request_id},
            status_code=500,
        )
