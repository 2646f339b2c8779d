"""HTTP endpoints: the OpenAI-compatible API and the operations endpoints."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from haven.contracts.embeddings import WarmRequest
from haven.contracts.llm import TokenizeRequest, TokenizeResponse
from haven.contracts.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    SamplingRequest,
    error_body,
    new_id,
    now,
)
from llm.model import LoadedModel, warm_cache
from llm.service import Generation, LlmService, NotReady, Prompt
from llm.slots import ANONYMOUS, Overloaded, Priority
from llm.streaming import (
    ChatShape,
    GenerationStream,
    Shape,
    TextShape,
    collect,
    event_stream,
    finish_reason,
    timeout_message,
    usage_of,
)
from models.registry import RegistryError

# The fair queue's placement of a request (see ``llm.slots``), sent by the API and workers.
TENANT_HEADER = "X-Haven-Tenant"
PRIORITY_HEADER = "X-Haven-Priority"

# Status for a request whose client has gone (nginx's convention); nobody reads it.
CLIENT_CLOSED = 499


@dataclass
class LlmRuntime:
    service: LlmService
    registry: CollectorRegistry


def get_runtime(request: Request) -> LlmRuntime:
    runtime: LlmRuntime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[LlmRuntime, Depends(get_runtime)]

router = APIRouter()


# -- operations ----------------------------------------------------------------------------


@router.get("/healthz", tags=["ops"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["ops"])
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    state = runtime.service.state
    body: dict[str, Any] = {"status": state.status}
    if state.error is not None:
        body["error"] = state.error
    if state.failed_file is not None:
        body["failed_file"] = state.failed_file
    return JSONResponse(body, status_code=200 if state.status == "ready" else 503)


@router.get("/info", tags=["ops"])
async def info(runtime: RuntimeDep) -> dict[str, Any]:
    service = runtime.service
    settings = service.settings
    body: dict[str, Any] = {
        "status": service.state.status,
        "alias": settings.llm_alias,
        "threads": settings.llm_threads,
        "slots": settings.llm_slots,
        "queue": settings.llm_queue,
        "request_timeout_seconds": settings.llm_request_timeout_seconds,
    }
    model, pool = service.state.model, service.state.pool
    if model is not None and pool is not None:
        body |= {
            "name": model.manifest.name,
            "version": model.manifest.version,
            "sha256": model.sha256,
            "context_length": model.context_length,
            "chat_template": model.template.origin,
            "active_slots": pool.active,
            "waiting": pool.waiting,
            # The fair queue's view: slots held and requests waiting, per tenant.
            "tenants": pool.by_tenant(),
        }
    return body


@router.get("/metrics", tags=["ops"])
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(generate_latest(runtime.registry), media_type=CONTENT_TYPE_LATEST)


# -- OpenAI API ----------------------------------------------------------------------------


@router.get("/v1/models", tags=["openai"])
async def list_models(runtime: RuntimeDep) -> ModelList:
    model, _ = runtime.service.ready()
    created = int(model.manifest.created_at.timestamp())
    return ModelList(data=[ModelCard(id=model.alias, created=created)])


@router.post("/v1/chat/completions", tags=["openai"], response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, runtime: RuntimeDep
) -> Response:
    service = runtime.service
    arrived, deadline = time.perf_counter(), _deadline(service)
    service.check_model_name(body.model)
    # Rendering and tokenising a long conversation takes CPU time: in a thread, so every
    # other stream on this event loop keeps flowing.
    prompt = await asyncio.to_thread(service.chat_prompt, body)
    shape = ChatShape(new_id("chatcmpl"), now(), service.settings.llm_alias)
    return await _generate(runtime, body, prompt, shape, request, arrived, deadline)


@router.post("/v1/completions", tags=["openai"], response_model=None)
async def completions(body: CompletionRequest, request: Request, runtime: RuntimeDep) -> Response:
    service = runtime.service
    arrived, deadline = time.perf_counter(), _deadline(service)
    service.check_model_name(body.model)
    prompt = await asyncio.to_thread(service.completion_prompt, body)
    shape = TextShape(new_id("cmpl"), now(), service.settings.llm_alias)
    return await _generate(runtime, body, prompt, shape, request, arrived, deadline)


@router.post("/warm", tags=["haven"])
async def warm(body: WarmRequest, runtime: RuntimeDep) -> dict[str, Any]:
    """Download these model versions into the cache (not loaded): after an alias switch the
    next start finds them local (the ``warmup`` maintenance task)."""
    try:
        done = await asyncio.to_thread(warm_cache, runtime.service.settings, body.models)
    except (RegistryError, ValueError) as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    return {"cached": done}


@router.post("/tokenize", tags=["haven"])
async def tokenize(body: TokenizeRequest, runtime: RuntimeDep) -> TokenizeResponse:
    """How many tokens texts (without BOS) and a rendered chat prompt take in this model."""
    service = runtime.service
    model, _ = service.ready()
    # Off the event loop: a thousand texts take a while to tokenise.
    return await asyncio.to_thread(_count_tokens, service, model, body)


def _count_tokens(
    service: LlmService, model: LoadedModel, body: TokenizeRequest
) -> TokenizeResponse:
    counts = [
        len(model.tokenizer.tokenize(text.encode("utf-8"), add_bos=False, special=False))
        for text in body.texts
    ]
    prompt_tokens = None
    if body.messages is not None:
        prompt_tokens = len(
            service.chat_prompt(ChatCompletionRequest(messages=body.messages)).tokens
        )
    return TokenizeResponse(
        model=model.alias,
        version=model.manifest.version,
        name=model.manifest.name,
        sha256=model.sha256,
        context_length=model.context_length,
        counts=counts,
        prompt_tokens=prompt_tokens,
    )


def _deadline(service: LlmService) -> float:
    return time.monotonic() + service.settings.llm_request_timeout_seconds


async def _generate(
    runtime: RuntimeDep,
    body: SamplingRequest,
    prompt: Prompt,
    shape: Shape,
    request: Request,
    arrived: float,
    deadline: float,
) -> Response:
    service = runtime.service
    watch = ClientWatch(request)
    try:
        generation = await _admit(service, prompt, watch, arrived, deadline, _place(request))
        if generation is None:
            return Response(status_code=CLIENT_CLOSED)
        if body.stream:
            # From here the streaming response watches the client itself and stops the
            # generation when it leaves.
            watch.stop()
            include_usage = body.stream_options is None or body.stream_options.include_usage
            limit = service.settings.llm_request_timeout_seconds
            return GenerationStream(
                generation,
                event_stream(generation, shape, include_usage=include_usage, time_limit=limit),
            )
        watch.on_disconnect(generation.cancel.set)
        outcome = await collect(generation)
    finally:
        watch.stop()
    if watch.gone:
        return Response(status_code=CLIENT_CLOSED)
    if outcome.error is not None or outcome.finished is None:
        return JSONResponse(
            error_body("generation failed", type_="server_error", code="internal_error"),
            status_code=500,
        )
    finished = outcome.finished
    if finished.reason == "timeout":
        message = timeout_message(service.settings.llm_request_timeout_seconds)
        return JSONResponse(
            error_body(message, type_="timeout", code="request_timeout"), status_code=504
        )
    answer = shape.answer(outcome.text, finish_reason(finished), usage_of(finished))
    return JSONResponse(answer.model_dump(mode="json"))


def _place(request: Request) -> tuple[str, Priority]:
    """Where the request queues (``llm.slots``): the caller's tenant and priority headers."""
    tenant = request.headers.get(TENANT_HEADER, ANONYMOUS)[:64]
    priority: Priority = (
        "batch" if request.headers.get(PRIORITY_HEADER, "").lower() == "batch" else "interactive"
    )
    return tenant, priority


async def _admit(
    service: LlmService,
    prompt: Prompt,
    watch: ClientWatch,
    arrived: float,
    deadline: float,
    place: tuple[str, Priority] = (ANONYMOUS, "interactive"),
) -> Generation | None:
    """A started generation, or None when the client left while it waited for a slot."""
    start = asyncio.ensure_future(
        service.start(
            prompt, arrived=arrived, deadline=deadline, tenant=place[0], priority=place[1]
        )
    )
    try:
        await asyncio.wait({start, watch.task}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        start.cancel()
        raise
    if not start.done():
        start.cancel()
    try:
        generation = await start
    except asyncio.CancelledError:
        return None
    except Overloaded as exc:
        service.metrics.rejections.labels(exc.reason).inc()
        raise
    except NotReady:
        service.metrics.rejections.labels("not_ready").inc()
        raise
    if watch.gone:
        # The slot was handed over just as the client left; its thread sees the flag
        # before evaluating anything and gives the slot back.
        generation.cancel.set()
        return None
    return generation


class ClientWatch:
    """Notices the client hanging up while the handler itself (not a streaming body) waits."""

    def __init__(self, request: Request) -> None:
        self.task = asyncio.ensure_future(self._wait(request))

    @staticmethod
    async def _wait(request: Request) -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    @property
    def gone(self) -> bool:
        return self.task.done() and not self.task.cancelled()

    def on_disconnect(self, callback: Any) -> None:
        def fire(task: asyncio.Future[None]) -> None:
            if not task.cancelled():
                callback()

        self.task.add_done_callback(fire)

    def stop(self) -> None:
        self.task.cancel()
