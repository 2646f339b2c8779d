"""Chats and their messages in PostgreSQL (synchronous; the router runs these in threads)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from api.chat.answer import AnswerDone
from api.chat.metering import Meter
from api.chat.prompt import Turn
from api.chat.schemas import Citation, MessageRead
from haven.auth.principal import Principal
from haven.db.engine import transaction
from haven.db.repositories import ChatRepository, MessageRepository
from haven.db.tables import Message
from haven.read_only import request_read_only

log = structlog.get_logger("haven.chat")

TITLE_LENGTH = 80


def stored_citations(message: Message) -> list[Citation]:
    """The citations stored with a message. Those stored before passages were quoted have
    no ``text`` and still load; one that no longer fits the schema is left out (and logged)
    rather than failing the whole conversation."""
    citations = []
    for item in message.citations.get("items", []):
        try:
            citations.append(Citation.model_validate(item))
        except ValidationError as exc:
            log.warning("chat.citation_unreadable", message_id=str(message.id), error=str(exc))
    return citations


def message_read(message: Message) -> MessageRead:
    return MessageRead(
        id=message.id,
        chat_id=message.chat_id,
        role=message.role,
        content=message.content,
        citations=stored_citations(message),
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
    """What an answer has produced so far (its ``meter``), stored once the answer ends however
    it ends: a finished answer with its citations and usage, an interrupted one with what was
    said; the tokens are settled against the budget in the same transaction."""

    factory: sessionmaker[Session]
    principal: Principal
    chat_id: uuid.UUID
    message_id: uuid.UUID
    meter: Meter
    stored: bool = False
    # Read-only mode was on when the question came: the answer is not added to the chat.
    read_only: bool = field(default_factory=request_read_only.get)

    @property
    def parts(self) -> list[str]:
        return self.meter.parts

    @property
    def done(self) -> AnswerDone | None:
        return self.meter.done

    def save(self, finished_at: float) -> None:
        if self.stored:
            return
        self.stored = True
        with transaction(self.factory) as session:
            self.meter.settle_in(session, finished_at)
            if self.done is None and not self.parts:
                return
            if self.read_only:  # read-only mode: the usage only (haven.read_only)
                return
            if ChatRepository(session, self.principal).get(self.chat_id) is None:
                return  # the chat was deleted while it answered
            MessageRepository(session, self.principal).add(self._message())

    def _message(self) -> Message:
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
        return Message(
            id=self.message_id,
            chat_id=self.chat_id,
            role="assistant",
            content=text,
            citations=citations,
            usage=usage,
            created_at=datetime.now(UTC),
        )


def settle(factory: sessionmaker[Session], meter: Meter, finished_at: float) -> None:
    """The usage of an answer that belongs to no chat (the OpenAI-compatible endpoint)."""
    with transaction(factory) as session:
        meter.settle_in(session, finished_at)
