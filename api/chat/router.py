"""Chats: conversations with the documents, answered over SSE (or JSON) with citations."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response, status
from fastapi.responses import JSONResponse

from api.chat import service
from api.chat.answer import (
    AnswerDone,
    AnswerFailed,
    AnswerRequest,
    AnswerToken,
    PreparedAnswer,
    generate,
    prepare,
)
from api.chat.metering import Meter
from api.chat.schemas import (
    AnswerRead,
    ChatCreate,
    ChatPage,
    ChatRead,
    ChatUpdate,
    MessageCreate,
    MessagePage,
)
from api.chat.stream import AnswerStream, sse_event, with_heartbeat
from api.deps import CurrentPrincipal, RequestIdDep, RuntimeDep, SessionDep
from api.errors import error_response
from api.pagination import Page, pagination
from api.runtime import ApiRuntime
from haven.db.repositories import ChatRepository, MessageRepository
from haven.db.tables import Chat

router = APIRouter(prefix="/api/v1", tags=["chat"])


@router.post("/chats", status_code=status.HTTP_201_CREATED, response_model=ChatRead)
def create_chat(body: ChatCreate, session: SessionDep, principal: CurrentPrincipal) -> Chat:
    return ChatRepository(session, principal).add(Chat(title=(body.title or "").strip()))


@router.get("/chats", response_model=ChatPage)
def list_chats(
    session: SessionDep,
    principal: CurrentPrincipal,
    page: Annotated[Page, pagination(default_limit=50, max_limit=200)],
) -> ChatPage:
    rows, total = ChatRepository(session, principal).list_page(offset=page.offset, limit=page.limit)
    return ChatPage(
        items=[ChatRead.model_validate(r) for r in rows],
        total=total,
        offset=page.offset,
        limit=page.limit,
    )


@router.get("/chats/{chat_id}", response_model=ChatRead)
def get_chat(chat_id: uuid.UUID, session: SessionDep, principal: CurrentPrincipal) -> Chat:
    return ChatRepository(session, principal).require(chat_id)


@router.patch("/chats/{chat_id}", response_model=ChatRead)
def rename_chat(
    chat_id: uuid.UUID, body: ChatUpdate, session: SessionDep, principal: CurrentPrincipal
) -> Chat:
    """Rename a chat: only its owner (anyone else's chat is not found)."""
    chats = ChatRepository(session, principal)
    chat = chats.require(chat_id)
    chat.title = body.title
    session.flush()
    session.refresh(chat)
    return chat


@router.get("/chats/{chat_id}/messages", response_model=MessagePage)
def list_messages(
    chat_id: uuid.UUID,
    session: SessionDep,
    principal: CurrentPrincipal,
    page: Annotated[Page, pagination(default_limit=200, max_limit=500)],
) -> MessagePage:
    ChatRepository(session, principal).require(chat_id)
    messages = MessageRepository(session, principal)
    rows = messages.of_chat(chat_id, offset=page.offset, limit=page.limit)
    return MessagePage(
        items=[service.message_read(m) for m in rows],
        total=messages.count_of_chat(chat_id),
        offset=page.offset,
        limit=page.limit,
    )


@router.delete("/chats/{chat_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_chat(chat_id: uuid.UUID, session: SessionDep, principal: CurrentPrincipal) -> Response:
    chats = ChatRepository(session, principal)
    chats.delete(chats.require(chat_id))  # its messages go with it (ON DELETE CASCADE)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _wants_json(accept: str | None) -> bool:
    accept = (accept or "").lower()
    return "application/json" in accept and "text/event-stream" not in accept


@router.post(
    "/chats/{chat_id}/messages",
    response_model=None,
    responses={200: {"content": {"text/event-stream": {}, "application/json": {}}}},
)
async def post_message(
    chat_id: uuid.UUID,
    body: MessageCreate,
    request: Request,
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    request_id: RequestIdDep,
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    """Ask a question in a chat. The answer streams as server-sent events (``meta``,
    ``token``..., ``done`` or ``error``) unless the request asks for ``application/json``."""
    started = time.perf_counter()
    factory = runtime.session_factory
    streaming = not _wants_json(accept)
    # Over the stream cap or the budget: a 429 before anything is stored or streamed.
    lease = await runtime.quotas.open_stream(principal, request.state.limits) if streaming else None
    meter = Meter(runtime, principal, "chat", request_id, started)
    try:
        history = await runtime.in_db_thread(
            service.load_history,
            factory,
            principal,
            chat_id,
            runtime.settings.chat_history_messages,
        )
        prepared = await prepare(
            runtime,
            principal.tenant_id,
            AnswerRequest(
                question=body.content,
                history=history,
                rag=body.rag,
                search=body.search,
                max_tokens=body.max_tokens,
                temperature=body.temperature,
                seed=body.seed,
            ),
        )
        await meter.reserve(prepared)
        try:
            await runtime.in_db_thread(
                service.store_question, factory, principal, chat_id, body.content
            )
        except BaseException:
            await meter.release()
            raise
    except BaseException:
        await runtime.quotas.streams.close(lease)
        raise
    recorder = service.AnswerRecorder(factory, principal, chat_id, uuid.uuid4(), meter)
    events = meter.track(generate(runtime, principal.tenant_id, prepared))
    if not streaming:
        return await _json_answer(runtime, events, prepared, recorder, chat_id, request_id)

    async def record() -> None:
        await meter.measure()
        await runtime.in_db_thread(recorder.save, time.perf_counter())

    async def store() -> None:
        try:
            await record()  # an answer cut short; one that ended was recorded already
        finally:
            await runtime.quotas.streams.close(lease)

    content = _sse(events, prepared, recorder, record, chat_id, request_id)
    return AnswerStream(with_heartbeat(content, runtime.settings.chat_heartbeat_seconds), store)


async def _sse(
    events: AsyncIterator[AnswerToken | AnswerDone | AnswerFailed],
    prepared: PreparedAnswer,
    recorder: service.AnswerRecorder,
    record: Callable[[], Awaitable[None]],
    chat_id: uuid.UUID,
    request_id: str | None,
) -> AsyncIterator[str]:
    """The answer's events as SSE. An answer that ends is stored and charged before its last
    event goes out, so a client that has read ``done`` (or ``error``) finds the message in the
    chat and the usage in the ledger, even if the API process dies right after."""
    yield sse_event(
        "meta",
        {
            "request_id": request_id,
            "chat_id": str(chat_id),
            "message_id": str(recorder.message_id),
            "model": prepared.model,
            "sources": [s.model_dump(mode="json") for s in prepared.sources],
            "reason": prepared.reason,
        },
    )
    async for event in events:
        if isinstance(event, AnswerToken):
            yield sse_event("token", {"text": event.text})
        elif isinstance(event, AnswerDone):
            await record()
            yield sse_event(
                "done",
                {
                    "message_id": str(recorder.message_id),
                    "finish_reason": event.finish_reason,
                    "usage": event.usage.model_dump(),
                    "citations": [c.model_dump(mode="json") for c in event.citations],
                    "cached": event.cached,
                    **event.grounding_fields(),
                    "notice": event.notice,
                },
            )
        else:
            await record()
            yield sse_event(
                "error",
                {
                    "reason": event.reason,
                    "code": event.error.code,
                    "status": event.status,
                    "retry_after": event.retry_after,
                },
            )


async def _json_answer(
    runtime: ApiRuntime,
    events: AsyncIterator[AnswerToken | AnswerDone | AnswerFailed],
    prepared: PreparedAnswer,
    recorder: service.AnswerRecorder,
    chat_id: uuid.UUID,
    request_id: str | None,
) -> Response:
    try:
        async for event in events:
            if isinstance(event, AnswerFailed):
                return error_response(event.error)
            if isinstance(event, AnswerDone):
                answer = AnswerRead(
                    chat_id=chat_id,
                    message_id=recorder.message_id,
                    request_id=request_id,
                    content=event.text,
                    sources=prepared.sources,
                    citations=event.citations,
                    usage=event.usage,
                    finish_reason=event.finish_reason,
                    cached=event.cached,
                    reason=prepared.reason,
                    grounded=event.grounded,
                    unsupported=event.unsupported,
                    notice=event.notice,
                )
                return JSONResponse(answer.model_dump(mode="json"))
    finally:
        await recorder.meter.measure()
        await runtime.in_db_thread(recorder.save, time.perf_counter())
    raise AssertionError("an answer always ends with done or error")
