"""A citation shows the passage it quotes after a reload, after its document is re-ingested
(its chunks replaced) and after the document is deleted: the passage is stored with the
message, as the model saw it. Real emb, llm (tiny GGUF), worker and API processes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from haven.db.engine import transaction
from haven.db.tables import Message
from tests.e2e.conftest import Stack
from tests.e2e.helpers import upload, wait_for, wait_job
from tests.e2e.test_chat import ask, chunk_tenant, new_chat
from tests.fixtures.api import Account, create_tenant_with_admin

ARCHIVE = (
    b"# Archive\n\nThe blue binders with the safety procedures are kept on shelf seven of the "
    b"east archive room. Visitors sign the archive ledger at the door.\n"
)
QUESTION = "Where are the blue binders kept?"


def messages(stack: Stack, who: Account, chat_id: str) -> list[dict[str, Any]]:
    response = stack.client.get(f"/api/v1/chats/{chat_id}/messages", headers=who.headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def test_citations_keep_their_passage_through_reload_reingest_and_delete(
    stack: Stack, admin: Account
) -> None:
    owner = create_tenant_with_admin(stack.client, admin)
    first = upload(stack, owner, "archive.md", ARCHIVE, source_id="archive")
    wait_job(stack, owner, first["job_id"], {"ready"})
    document_id = first["document"]["id"]

    chat_id = new_chat(stack, owner)
    events = ask(stack, owner, chat_id, QUESTION)
    meta, done = events[0].data, events[-1].data
    assert done["cached"] is False
    citations = done["citations"]
    quoted = citations[0]
    assert quoted["document_id"] == document_id and quoted["version"] == 1
    assert quoted["title"] and quoted["page"] is None
    # The passage as the model saw it: the prompt's source text, whole.
    assert quoted["text"] == meta["sources"][0]["text"]
    assert "shelf seven" in quoted["text"] and quoted["text_truncated"] is False
    assert [c["chunk_id"] for c in citations] == [s["chunk_id"] for s in meta["sources"]]

    # A reload: the stored message has the same citations, passage included. (The answer is
    # stored as its stream closes, which the client may see first.)
    wait_for(lambda: len(messages(stack, owner, chat_id)) == 2, 10, "the answer stored")
    stored = messages(stack, owner, chat_id)
    assert stored[1]["role"] == "assistant" and stored[1]["citations"] == citations

    # Asked again: answered from the cache, and its citations quote the passage too.
    again = ask(stack, owner, new_chat(stack, owner), QUESTION)
    assert again[-1].data["cached"] is True
    assert again[-1].data["citations"] == citations

    # The OpenAI-compatible answer carries the passage in its citations as well.
    completion = stack.client.post(
        "/v1/chat/completions",
        json={
            "model": "haven-rag",
            "messages": [{"role": "user", "content": QUESTION}],
            "max_tokens": 5,
        },
        headers=owner.headers,
    )
    assert completion.status_code == 200, completion.text
    assert "shelf seven" in completion.json()["citations"][0]["text"]

    # Re-ingested as version 2: the quoted chunk is replaced, the new answer quotes the new
    # text, and the earlier answer still shows the passage it was given.
    changed = ARCHIVE.replace(b"shelf seven", b"shelf nine")
    second = upload(stack, owner, "archive.md", changed, source_id="archive")
    assert (second["document"]["id"], second["version"]) == (document_id, 2)
    wait_job(stack, owner, second["job_id"], {"ready"})
    assert chunk_tenant(stack, quoted["chunk_id"]) is None
    fresh = ask(stack, owner, new_chat(stack, owner), QUESTION)[-1].data
    assert fresh["cached"] is False
    assert "shelf nine" in fresh["citations"][0]["text"] and fresh["citations"][0]["version"] == 2
    reloaded = messages(stack, owner, chat_id)[1]["citations"][0]
    assert reloaded["version"] == 1 and "shelf seven" in reloaded["text"]

    # Deleted: the document is gone, its citation's passage is not.
    deleted = stack.client.delete(f"/api/v1/documents/{document_id}", headers=owner.headers)
    assert deleted.status_code == 204, deleted.text
    gone = stack.client.get(f"/api/v1/documents/{document_id}", headers=owner.headers)
    assert gone.status_code == 404
    assert messages(stack, owner, chat_id)[1]["citations"] == citations


def test_messages_stored_before_passages_were_kept_still_load(stack: Stack, admin: Account) -> None:
    owner = create_tenant_with_admin(stack.client, admin)
    chat_id = new_chat(stack, owner)
    old_citation = {
        "n": 1,
        "chunk_id": str(uuid.uuid4()),
        "document_id": str(uuid.uuid4()),
        "title": "notes.md",
        "version": 1,
        "page": None,
        "cited": True,
    }
    with transaction(stack.session_factory) as session:
        session.add(
            Message(
                tenant_id=owner.tenant_id,
                chat_id=uuid.UUID(chat_id),
                role="assistant",
                content="Shelf seven [1].",
                citations={"items": [old_citation, {"n": "not a citation"}]},
                usage={"finish_reason": "stop"},
                created_at=datetime.now(UTC),
            )
        )
    [message] = messages(stack, owner, chat_id)
    assert message["content"] == "Shelf seven [1]."
    [citation] = message["citations"]  # the unreadable one is left out, not a 500
    assert citation["chunk_id"] == old_citation["chunk_id"] and citation["cited"] is True
    assert citation["text"] is None and citation["text_truncated"] is False
