"""Error answers in OpenAI's shape, so OpenAI clients raise readable exceptions.

Every refusal is immediate and says why: a wrong model 404, bad parameters 422 naming the
field, a prompt that does not fit 400 with the token counts, a full service 503 with
Retry-After.
"""

from __future__ import annotations

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from haven.contracts.openai import error_body
from llm.service import InvalidPrompt, NotReady, PromptTooLong, UnknownModel
from llm.slots import Overloaded

log = structlog.get_logger("haven.llm")


def install_error_handlers(app: FastAPI, retry_after_seconds: int) -> None:
    retry_after = {"Retry-After": str(retry_after_seconds)}

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                # ("body", "messages", 0, "role") -> "messages.0.role"
                "field": ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body",
                "message": err.get("msg", "invalid"),
            }
            for err in exc.errors()
        ]
        first = errors[0] if errors else {"field": "body", "message": "invalid request"}
        message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        body = error_body(
            message, type_="invalid_request_error", code="invalid_value", param=first["field"]
        )
        body["errors"] = errors
        return JSONResponse(body, status_code=422)

    @app.exception_handler(UnknownModel)
    async def unknown_model(_: Request, exc: UnknownModel) -> JSONResponse:
        return JSONResponse(
            error_body(
                str(exc), type_="invalid_request_error", code="model_not_found", param="model"
            ),
            status_code=404,
        )

    @app.exception_handler(InvalidPrompt)
    async def invalid_prompt(_: Request, exc: InvalidPrompt) -> JSONResponse:
        return JSONResponse(
            error_body(
                str(exc), type_="invalid_request_error", code="invalid_prompt", param=exc.param
            ),
            status_code=400,
        )

    @app.exception_handler(PromptTooLong)
    async def too_long(_: Request, exc: PromptTooLong) -> JSONResponse:
        body = error_body(
            str(exc),
            type_="invalid_request_error",
            code="context_length_exceeded",
            param="messages",
            prompt_tokens=exc.prompt_tokens,
            max_tokens=exc.max_tokens,
            context_length=exc.context_length,
        )
        return JSONResponse(body, status_code=400)

    @app.exception_handler(Overloaded)
    async def overloaded(_: Request, exc: Overloaded) -> JSONResponse:
        return JSONResponse(
            error_body(str(exc), type_="overloaded", code=exc.reason),
            status_code=503,
            headers=retry_after,
        )

    @app.exception_handler(NotReady)
    async def not_ready(_: Request, exc: NotReady) -> JSONResponse:
        return JSONResponse(
            error_body(f"model not ready: {exc}", type_="unavailable", code="model_not_ready"),
            status_code=503,
            headers=retry_after,
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("http.unhandled_error", path=request.url.path)
        request_id = getattr(request.state, "request_id", None)
        body = error_body("internal error", type_="server_error", code="internal_error")
        body["request_id"] = request_id
        return JSONResponse(body, status_code=500)
