"""The web app end to end in chromium: sign in, upload and watch the stages, a streamed answer
with its citations that survives a reload, Stop before and after the first token freeing
llm's slot, the API's words when an answer is refused, and what a viewer does not see.

The llm service's tiny GGUF writes random tokens and never stops by itself: an answer is as
long as the request asks (the chat's "Longest answer" option)."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from haven.db.tables import Role
from tests.e2e.conftest import Stack
from tests.e2e.helpers import upload, wait_for, wait_job
from tests.fixtures.api import PASSWORD, Account, create_tenant_with_admin, create_user
from tests.fixtures.sse import events_of
from tests.web.conftest import (
    WEB_STACK_ENV,
    llm_info,
    screenshots,
    serious_accessibility_violations,
    sign_in,
)

pytestmark = [pytest.mark.web, pytest.mark.slow]

STACK_ENV = WEB_STACK_ENV

WAREHOUSE = (
    "# Warehouse\n\nCopper wire is stored on pallets in aisle twelve of the north warehouse. "
    "The forklift team moves the copper pallets every Tuesday morning.\n"
)
BUDGET = (
    "# Budget\n\nThe annual budget review happens in March. The finance team approves "
    "every travel request above five hundred euros.\n"
)
CANTEEN = "# Canteen\n\nThe canteen serves lunch from noon to two. Soup is free on Fridays.\n"
LONG = 30000
# web/src/lib/upload.ts: files from this size go straight to the object store.
PRESIGNED_FROM_BYTES = 8 * 1024 * 1024

# Every stage an upload's row shows, in the order it shows them (MutationObserver).
RECORD_STAGES = """() => {
  window.stagesSeen = {};
  new MutationObserver(() => {
    document.querySelectorAll('[data-testid=uploads] > li').forEach((li) => {
      const name = li.querySelector('.name').textContent;
      const seen = (window.stagesSeen[name] ||= []);
      if (seen[seen.length - 1] !== li.dataset.stage) seen.push(li.dataset.stage);
    });
  }).observe(document.body, {subtree: true, childList: true, attributes: true});
}"""

# The last answer's text length each time it changes while it is streaming.
RECORD_STREAM = """() => {
  window.streamed = [];
  new MutationObserver(() => {
    const answers = document.querySelectorAll('li.turn.assistant');
    const last = answers[answers.length - 1];
    if (!last || last.dataset.state !== 'streaming') return;
    const text = last.querySelector('.markdown');
    const length = text ? text.textContent.length : 0;
    const seen = window.streamed;
    if (length && seen[seen.length - 1] !== length) seen.push(length);
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def owner(stack: Stack, admin: Account) -> Account:
    """A tenant whose library holds the warehouse document (uploaded through the API)."""
    tenant_admin = create_tenant_with_admin(stack.client, admin)
    accepted = upload(stack, tenant_admin, "warehouse.md", WAREHOUSE.encode())
    wait_job(stack, tenant_admin, accepted["job_id"], {"ready"})
    return tenant_admin


def last_answer(page: Page) -> Any:
    return page.locator("li.turn.assistant").last


def ask(page: Page, question: str, longest: int | None = None, keyboard: bool = False) -> None:
    if longest is not None:
        options = page.locator("details.options")
        if options.get_attribute("open") is None:
            options.locator("summary").click()
        page.get_by_label("Longest answer").fill(str(longest))
    box = page.get_by_label("Your question")
    box.fill(question)
    if keyboard:
        box.press("Enter")  # Enter sends, Shift+Enter is a new line
    else:
        page.get_by_role("button", name="Send").click()


def test_sign_in_upload_two_files_and_watch_them_reach_ready(page: Page, owner: Account) -> None:
    sign_in(page, owner, "/documents")
    expect(page.get_by_role("heading", name="Documents")).to_be_visible()
    page.evaluate(RECORD_STAGES)
    # One file chosen with the file picker, one dropped on the drop zone.
    page.get_by_test_id("file-input").set_input_files(
        files=[{"name": "canteen.md", "mimeType": "text/markdown", "buffer": CANTEEN.encode()}]
    )
    dropped = page.evaluate_handle(
        """([name, text]) => {
            const data = new DataTransfer();
            data.items.add(new File([text], name, {type: 'text/markdown'}));
            return data;
        }""",
        ["budget.md", BUDGET],
    )
    page.get_by_test_id("dropzone").dispatch_event("drop", {"dataTransfer": dropped})

    uploads = page.get_by_test_id("uploads").locator(":scope > li")
    expect(uploads).to_have_count(2)
    for row in (uploads.nth(0), uploads.nth(1)):
        expect(row).to_have_attribute("data-stage", "ready", timeout=120_000)
    seen: dict[str, list[str]] = page.evaluate("window.stagesSeen")
    for name in ("canteen.md", "budget.md"):
        stages = seen[name]
        assert stages[0] == "uploading" and stages[1] == "uploaded", stages
        assert stages[-1] == "ready", stages
    # The library lists both, ready.
    table = page.get_by_test_id("documents")
    for title in ("canteen", "budget"):
        row = table.locator("tr", has_text=re.compile(title, re.I))
        expect(row.locator(".stage")).to_have_text("ready")
    screenshots(page, "documents")
    assert serious_accessibility_violations(page) == []


def test_a_large_file_goes_to_the_object_store_and_a_refusal_shows_the_reason(
    page: Page, site: str, owner: Account
) -> None:
    sign_in(page, owner, "/documents")
    sent: list[tuple[str, str]] = []
    page.on("request", lambda request: sent.append((request.method, request.url)))
    noise = os.urandom(PRESIGNED_FROM_BYTES + 4096)
    page.get_by_test_id("file-input").set_input_files(
        files=[{"name": "noise.bin", "mimeType": "application/octet-stream", "buffer": noise}]
    )
    row = page.get_by_test_id("uploads").locator(":scope > li").first
    expect(row).to_have_attribute("data-stage", "failed", timeout=60_000)
    # The API looked at the stored bytes and said why in its own words.
    expect(row.locator(".error")).to_contain_text("unsupported file type; supported:")
    # The presigned path: a slot from the API, the bytes to the store through nginx's
    # /objects/, then .../complete; never the API's multipart upload.
    posts = [url.removeprefix(site) for method, url in sent if method == "POST"]
    assert posts[0] == "/api/v1/documents/uploads", posts
    assert posts[1].startswith("/objects/"), posts
    assert re.fullmatch(r"/api/v1/documents/uploads/[0-9a-f-]{36}/complete", posts[2]), posts
    assert "/api/v1/documents" not in posts


def test_answer_streams_cites_its_passage_and_is_still_there_after_a_reload(
    page: Page, owner: Account
) -> None:
    sign_in(page, owner, "/chat")
    page.evaluate(RECORD_STREAM)
    ask(page, "Which aisle holds the copper wire?", longest=400, keyboard=True)
    answer = last_answer(page)
    expect(answer).to_have_attribute("data-state", "done", timeout=60_000)
    # Tokens were on screen before the answer was complete, growing (how many renders the
    # browser makes of them depends on how fast they come: two at least).
    streamed: list[int] = page.evaluate("window.streamed")
    assert len(streamed) >= 2, streamed
    assert streamed == sorted(streamed)
    text = answer.locator(".markdown").inner_text()
    assert len(text) >= streamed[-1] > streamed[0] > 0

    page.locator("details.options summary").click()  # the options folded away again
    # A source opens its passage: document, version and the quoted text.
    answer.get_by_test_id("sources").get_by_role("button", name="warehouse").first.click()
    citation = page.get_by_test_id("citation")
    expect(citation.get_by_test_id("citation-text")).to_contain_text("aisle twelve")
    expect(citation).to_contain_text("version 1")
    screenshots(page, "chat")
    assert serious_accessibility_violations(page) == []
    citation.get_by_role("button", name="Close").click()
    expect(citation).to_be_hidden()

    # The chat is in the history; after a reload the conversation and its citations are back.
    url = page.url
    assert "?c=" in url
    expect(page.get_by_test_id("chat-list")).to_contain_text("Which aisle holds the copper")
    page.reload()
    expect(page.get_by_test_id("role")).to_have_text("tenant_admin")
    expect(page.locator("li.turn.user .question")).to_have_text(
        "Which aisle holds the copper wire?"
    )
    again = last_answer(page)
    expect(again.locator(".markdown")).to_have_text(text)
    again.get_by_test_id("sources").get_by_role("button", name="warehouse").first.click()
    expect(page.get_by_test_id("citation-text")).to_contain_text("aisle twelve")
    page.get_by_test_id("citation").get_by_role("button", name="Close").click()

    # Renamed in the history, and still so after a reload.
    page.get_by_role("button", name="Rename Which aisle holds").click()
    page.get_by_label("New title").fill("Copper questions")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("heading", name="Copper questions")).to_be_visible()
    page.reload()
    expect(
        page.get_by_test_id("chat-list").get_by_role("link", name="Copper questions")
    ).to_be_visible()


def test_without_rag_the_answer_uses_no_documents(page: Page, owner: Account) -> None:
    sign_in(page, owner, "/chat")
    page.locator("details.options summary").click()
    page.get_by_label("Answer from the documents (RAG)").uncheck()
    expect(page.get_by_label("Search mode")).to_be_disabled()
    ask(page, "Which aisle holds the copper wire?", longest=24)
    answer = last_answer(page)
    expect(answer).to_have_attribute("data-state", "done", timeout=60_000)
    assert answer.locator(".markdown").inner_text()
    expect(answer.get_by_test_id("sources")).to_have_count(0)


def test_stop_before_the_first_token_and_after_a_few_frees_the_model(
    page: Page, stack: Stack, owner: Account
) -> None:
    sign_in(page, owner, "/chat")
    chat = stack.client.post("/api/v1/chats", json={}, headers=owner.headers).json()["id"]
    busy_body = {"content": "Tell me everything about the warehouse.", "max_tokens": LONG}
    # Another answer holds llm's only slot: this one waits in its queue, with no token yet.
    with stack.client.stream(
        "POST", f"/api/v1/chats/{chat}/messages", json=busy_body, headers=owner.headers
    ) as busy:
        events = events_of(busy)
        while next(events).name != "token":
            pass
        ask(page, "Who moves the copper pallets?", longest=LONG)
        wait_for(lambda: llm_info(stack)["waiting"] == 1, 30, "the question queued", 0.05)
        stop = page.get_by_role("button", name="Stop")
        expect(stop).to_be_enabled()
        answer = last_answer(page)
        expect(answer).to_have_attribute("data-state", "streaming")
        expect(answer.locator(".markdown")).to_have_count(0)
        stop.click()
        expect(answer).to_have_attribute("data-state", "stopped")
        expect(answer.get_by_test_id("stopped")).to_be_visible()
        expect(stop).to_be_disabled()
        # The request ended: it left llm's queue without ever taking the slot.
        wait_for(lambda: llm_info(stack)["waiting"] == 0, 20, "the queued question gone", 0.05)
        assert llm_info(stack)["active_slots"] == 1  # the other answer still runs
    wait_for(lambda: llm_info(stack)["active_slots"] == 0, 20, "the slot free", 0.05)

    # Now a long answer, stopped after a few tokens.
    ask(page, "Describe the north warehouse in detail.", longest=LONG)
    answer = last_answer(page)
    wait_for(
        lambda: (
            len(answer.locator(".markdown").all_inner_texts() or [""]) > 0
            and len((answer.locator(".markdown").all_inner_texts() or [""])[0]) > 20
        ),
        60,
        "a few tokens on screen",
        0.1,
    )
    assert llm_info(stack)["active_slots"] == 1
    page.get_by_role("button", name="Stop").click()
    expect(answer).to_have_attribute("data-state", "stopped")
    wait_for(lambda: llm_info(stack)["active_slots"] == 0, 20, "llm's slot freed", 0.05)
    assert llm_info(stack)["waiting"] == 0
    # What was said stays on screen.
    assert len(answer.locator(".markdown").inner_text()) > 20
    # ... and after a reload, marked as stopped.
    chat_id = page.url.split("?c=")[1]
    said = answer.locator(".markdown").inner_text()

    def stored() -> list[dict[str, Any]]:
        url = f"/api/v1/chats/{chat_id}/messages"
        items: list[dict[str, Any]] = stack.client.get(url, headers=owner.headers).json()["items"]
        return items

    # Both questions; the answer stopped before its first token had nothing to keep.
    wait_for(lambda: len(stored()) == 3, 20, "the stopped answer stored", 0.1)
    assert [m["role"] for m in stored()] == ["user", "user", "assistant"]
    assert stored()[2]["usage"]["finish_reason"] == "interrupted"
    page.reload()
    answer = last_answer(page)
    expect(answer).to_have_attribute("data-state", "stopped")
    expect(answer.get_by_test_id("stopped")).to_be_visible()
    assert said.startswith(answer.locator(".markdown").inner_text()[:20])

    # Deleted from the history (after the browser's confirmation).
    title = "Who moves the copper pallets?"
    expect(page.get_by_test_id("chat-list")).to_contain_text(title)
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name=f"Delete {title}").click()
    expect(page.get_by_test_id("chat-list")).not_to_contain_text(title)


def test_an_answer_over_the_budget_is_the_apis_message_not_a_blank(
    page: Page, stack: Stack, admin: Account, owner: Account
) -> None:
    budget_url = f"/api/v1/admin/tenants/{owner.tenant_id}/budget"
    set_budget = stack.client.put(budget_url, json={"token_budget": 0}, headers=admin.headers)
    assert set_budget.status_code == 200, set_budget.text
    try:
        chat = stack.client.post("/api/v1/chats", json={}, headers=owner.headers).json()["id"]
        refused = stack.client.post(
            f"/api/v1/chats/{chat}/messages",
            json={"content": "Which aisle?"},
            headers={**owner.headers, "Accept": "text/event-stream"},
        )
        assert refused.status_code == 429
        detail = refused.json()["detail"]

        sign_in(page, owner, "/chat")
        ask(page, "Which aisle holds the copper wire?", longest=16)
        answer = last_answer(page)
        expect(answer).to_have_attribute("data-state", "failed")
        # The API's words (the figures depend on the question's size).
        words = detail.split(" cannot hold ")[0]
        assert words == "the tenant's token budget of 0 tokens for this period"
        error = answer.get_by_test_id("answer-error")
        expect(error).to_contain_text(words + " cannot hold ")
        expect(error).to_contain_text("it resets at")
        expect(page.get_by_role("button", name="Send")).to_be_disabled()  # empty box
        expect(page.get_by_role("button", name="Stop")).to_be_disabled()
    finally:
        stack.client.put(budget_url, json={"token_budget": None}, headers=admin.headers)


def test_a_busy_model_is_said_and_the_question_retried_after_retry_after(
    page: Page, stack: Stack, owner: Account
) -> None:
    sign_in(page, owner, "/chat")
    url_of = lambda chat: f"/api/v1/chats/{chat}/messages"  # noqa: E731
    new_chat = lambda: stack.client.post(  # noqa: E731
        "/api/v1/chats", json={}, headers=owner.headers
    ).json()["id"]
    body = {"content": "Tell me everything about the budget.", "max_tokens": LONG}
    stop_waiter = threading.Event()

    def waiting_stream(chat: str) -> None:
        with stack.client.stream("POST", url_of(chat), json=body, headers=owner.headers) as r:
            for event in events_of(r):
                if stop_waiter.is_set() or event.name in ("done", "error"):
                    return

    with stack.client.stream("POST", url_of(new_chat()), json=body, headers=owner.headers) as busy:
        events = events_of(busy)
        while next(events).name != "token":
            pass
        waiter = threading.Thread(target=waiting_stream, args=(new_chat(),))
        waiter.start()
        try:
            wait_for(lambda: llm_info(stack)["waiting"] == 1, 20, "slot and queue full", 0.05)
            ask(page, "Is the model free?", longest=16)
            answer = last_answer(page)
            error = answer.get_by_test_id("answer-error")
            expect(error).to_contain_text("Trying again in", timeout=30_000)
            assert error.inner_text().strip()
        finally:
            stop_waiter.set()
    waiter.join(timeout=60)
    # Once the model is free, the retry (after Retry-After) gets the answer.
    expect(answer).to_have_attribute("data-state", "done", timeout=90_000)
    expect(answer.get_by_test_id("answer-error")).to_have_count(0)
    assert answer.locator(".markdown").inner_text()


def test_a_viewer_sees_no_upload_or_admin_controls_and_sign_out_ends_the_session(
    page: Page, stack: Stack, owner: Account
) -> None:
    viewer = create_user(stack.client, owner, Role.VIEWER)
    sign_in(page, viewer, "/documents")
    expect(page.get_by_test_id("documents")).to_contain_text(re.compile("warehouse", re.I))
    expect(page.get_by_role("link", name="Administration")).to_have_count(0)
    expect(page.get_by_test_id("dropzone")).to_have_count(0)
    expect(page.get_by_role("button", name="Delete", exact=False)).to_have_count(0)
    # Download: a short-lived link through nginx's /objects/, saved as a file.
    with page.expect_download() as downloading:
        page.get_by_role("button", name="Download warehouse").click()
    download = downloading.value
    assert download.suggested_filename == "warehouse.md"
    assert "aisle twelve" in Path(download.path()).read_text()
    page.goto("/admin")
    expect(page.get_by_text("Administration is for tenant administrators.")).to_be_visible()
    expect(page.get_by_role("tab")).to_have_count(0)

    # Search: each hit with its channel ranks.
    page.get_by_role("link", name="Search").click()
    page.get_by_label("Query").fill("copper pallets aisle")
    page.get_by_role("button", name="Search").click()
    hits = page.get_by_test_id("hits").locator(":scope > li")
    expect(hits.first).to_contain_text("aisle twelve")
    expect(hits.first.locator(".ranks")).to_contain_text(re.compile(r"dense rank \d+"))
    expect(hits.first.locator(".ranks")).to_contain_text(re.compile(r"lexical rank \d+"))
    assert serious_accessibility_violations(page) == []

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    assert serious_accessibility_violations(page) == []  # the sign-in form
    page.reload()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()


def test_a_user_disabled_meanwhile_is_sent_back_to_the_sign_in_form(
    page: Page, stack: Stack, owner: Account
) -> None:
    editor = create_user(stack.client, owner, Role.EDITOR)
    sign_in(page, editor, "/documents")
    expect(page.get_by_test_id("documents")).to_contain_text(re.compile("warehouse", re.I))
    disabled = stack.client.patch(
        f"/api/v1/admin/users/{editor.user_id}",
        json={"is_active": False},
        headers=owner.headers,
    )
    assert disabled.status_code == 200, disabled.text
    # The next call is refused; the session cannot be renewed either: the sign-in form.
    page.get_by_role("button", name="Refresh").click()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    page.get_by_label("Username").fill(editor.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert").filter(has_text="disabled")).to_be_visible()


def test_administration_users_keys_audit_and_usage(page: Page, owner: Account) -> None:
    sign_in(page, owner, "/admin")
    expect(page.get_by_test_id("users")).to_contain_text(owner.username)
    screenshots(page, "admin")
    assert serious_accessibility_violations(page) == []

    # The tabs work from the keyboard: arrows move between them.
    page.get_by_role("tab", name="Users").focus()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tab", name="API keys")).to_have_attribute("aria-selected", "true")
    expect(page.get_by_role("tab", name="API keys")).to_be_focused()
    page.get_by_label("Name").fill("importer")
    page.get_by_role("button", name="Create key").click()
    shown = page.get_by_test_id("new-key")
    expect(shown).to_contain_text("shown only this once")
    key = shown.locator("code").inner_text()
    assert len(key) > 20
    shown.get_by_role("button", name="Done").click()
    expect(page.get_by_test_id("new-key")).to_have_count(0)
    expect(page.get_by_role("tabpanel")).not_to_contain_text(key)

    page.get_by_role("tab", name="Audit log").click()
    expect(page.get_by_test_id("audit")).to_contain_text("api_key")
    page.get_by_role("tab", name="Usage").click()
    expect(page.get_by_test_id("budget")).to_contain_text("Budget")
    screenshots(page, "admin-usage")
    assert serious_accessibility_violations(page) == []


def test_the_read_only_banner_and_the_build_version(
    page: Page, stack: Stack, admin: Account, owner: Account
) -> None:
    sign_in(page, admin, "/admin")
    version = stack.client.get("/api/version").json()["version"]
    expect(page.get_by_test_id("build-version")).to_contain_text(f"Haven {version}")
    expect(page.get_by_test_id("read-only-banner")).to_have_count(0)
    # A platform admin switches read-only mode on from the Maintenance tab.
    page.get_by_role("tab", name="Maintenance").click()
    expect(page.get_by_test_id("read-only-state")).to_contain_text("Read-only mode is off")
    try:
        page.get_by_label("Reason shown to everyone").fill("moving the database")
        page.get_by_role("button", name="Turn read-only mode on").click()
        expect(page.get_by_test_id("read-only-state")).to_contain_text("on (moving the database)")
        banner = page.get_by_test_id("read-only-banner")
        expect(banner).to_contain_text("read-only mode", timeout=15_000)
        expect(banner).to_contain_text("moving the database")
        assert stack.client.get("/api/version").json()["read_only"]["on"] is True
        # A change is refused in the API's words; reading goes on.
        page.get_by_role("link", name="Documents").click()
        expect(banner).to_be_visible()
        page.get_by_test_id("file-input").set_input_files(
            files=[{"name": "late.md", "mimeType": "text/markdown", "buffer": b"# Late\n\nx\n"}]
        )
        row = page.get_by_test_id("uploads").locator(":scope > li").first
        expect(row).to_have_attribute("data-stage", "failed")
        expect(row).to_contain_text("read-only mode")
        # Off again from the same tab.
        page.get_by_role("link", name="Administration").click()
        page.get_by_role("tab", name="Maintenance").click()
        page.get_by_role("button", name="Turn read-only mode off").click()
        expect(page.get_by_test_id("read-only-state")).to_contain_text("Read-only mode is off")
        expect(banner).to_have_count(0, timeout=15_000)
    finally:
        off = {"on": False}
        stack.client.put("/api/v1/admin/read-only", json=off, headers=admin.headers)
