"""Chats and their messages in PostgreSQL (synchronous; the router runs these in threads)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from api.chat.answer import AnswerDone
from api.chat.prompt import Turn
from api.chat.schemas import MessageRead
from haven.auth.principal import Principal
from haven.db.engine import transaction
from haven.db.repositories import ChatRepository, MessageRepository, UsageRepository
from haven.db.tables import Message
from haven.read_only import request_read_only

TITLE_LENGTH = 80


def message_read(message: Message) -> MessageRead:
    return MessageRead(
        id=message.id,
        chat_id=message.chat_id,
        role=message.role,
        content=message.content,
        citations=list(message.citations.get("items", [])),
        usage=message.usage,
        created_at=message.created_at,
        grounded=message.citations.get("grounded"),
        unsupported=list(message.citations.get("unsupported", [])),
    )


def load_history(
    factory: sessionmaker[Session], principal: Principal, chat_id: uuid.UUID, limit: int
) -> list[Turn]:
    """The chat's last ``limit`` messages; raises ``NotFound`` for a chat the caller
    cannot see."""
    with transaction(factory) as session:
        ChatRepository(session, principal).require(chat_id)
        if limit == 0:
            return []
        messages = MessageRepository(session, principal).latest(chat_id, limit)
        return [Turn(m.role, m.content) for m in messages if m.role in ("user", "assistant")]


def store_question(
    factory: sessionmaker[Session], principal: Principal, chat_id: uuid.UUID, content: str
) -> uuid.UUID | None:
    if request_read_only.get():  # answered, not added to the chat (haven.read_only)
        return None
    with transaction(factory) as session:
        chats = ChatRepository(session, principal)
        chat = chats.require(chat_id)
        if not chat.title:
            chat.title = content[:TITLE_LENGTH]
        chats.touch(chat)
        message = MessageRepository(session, principal).add(
            Message(
                id=uuid.uuid4(),
                chat_id=chat_id,
                role="user",
                content=content,
                created_at=datetime.now(UTC),
            )
        )
        return message.id


@dataclass
class AnswerRecorder:
    """What an answer has produced so far, stored once the answer ends however it ends: a
    finished answer with its citations and usage, an interrupted one with what was said."""

    factory: sessionmaker[Session]
    principal: Principal
    chat_id: uuid.UUID
    message_id: uuid.UUID
    request_id: str | None
    started: float
    parts: list[str] = field(default_factory=list)
    done: AnswerDone | None = None
    stored: bool = False
    # Read-only mode was on when the question came: the answer is not added to the chat.
    read_only: bool = field(default_factory=request_read_only.get)

    def save(self, finished_at: float) -> None:
        if self.stored or (self.done is None and not self.parts):
            return
        self.stored = True
        done = self.done
        usage: dict[str, Any]
        # The citations column holds the answer's checkable apparatus: every source offered
        # (``items``) and the grounding check.
        citations: dict[str, Any]
        if done is not None:
            text = done.text
            citations = {
                "items": [c.model_dump(mode="json") for c in done.citations],
                **done.grounding_fields(),
            }
            usage = {
                **done.usage.model_dump(),
                "finish_reason": done.finish_reason,
                "cached": done.cached,
            }
        else:
            text, citations = "".join(self.parts), {"items": []}
            usage = {"finish_reason": "interrupted"}
        with transaction(self.factory) as session:
            if ChatRepository(session, self.principal).get(self.chat_id) is None:
                return  # the chat was deleted while it answered
            if self.read_only:  # read-only mode: the usage only (haven.read_only)
                if done is not None:
                    _record_usage(
                        session, self.principal, done, finished_at - self.started, self.request_id
                    )
                return
            MessageRepository(session, self.principal).add(
                Message(
                    id=self.message_id,
                    chat_id=self.chat_id,
                    role="assistant",
                    content=text,
                    citations=citations,
                    usage=usage,
                    created_at=datetime.now(UTC),
                )
            )
            if done is not None:
                _record_usage(
                    session, self.principal, done, finished_at - self.started, self.request_id
                )


def _record_usage(
    session: Session,
    principal: Principal,
    done: AnswerDone,
    seconds: float,
    request_id: str | None,
) -> None:
    # A cached answer costs the model nothing.
    UsageRepository(session, principal).record(
        "chat.cached" if done.cached else "chat",
        prompt_tokens=0 if done.cached else done.usage.prompt_tokens,
        completion_tokens=0 if done.cached else done.usage.completion_tokens,
        latency_ms=int(seconds * 1000),
        request_id=request_id,
    )


def record_usage(
    factory: sessionmaker[Session],
    principal: Principal,
    done: AnswerDone,
    seconds: float,
    request_id: str | None,
) -> None:
    """The usage of an answer that belongs to no chat (the OpenAI-compatible endpoint)."""
    with transaction(factory) as session:
        _record_usage(session, principal, done, seconds, request_id)
