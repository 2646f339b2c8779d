"""A code review end to end: the API, a real worker, the real llm (tiny GGUF) and two local
receivers standing in for the course platform's endpoints (the only test doubles: they are
outside Haven)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select

from haven.db.tables import ReviewDelivery, UsageEntry
from tests.e2e.conftest import Stack
from tests.e2e.helpers import wait_for
from tests.fixtures import review_archives as z
from tests.fixtures.api import Account, create_tenant_with_admin
from tests.fixtures.services import free_port


class Receiver:
    """A course platform's endpoint: records what it is sent; ``down`` answers 503."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[dict[str, Any]] = []
        self.refused = 0
        self.down = False
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.down:
                    receiver.refused += 1
                    self.send_response(503)
                    self.end_headers()
                    return
                receiver.received.append(
                    {"key": self.headers.get("Idempotency-Key"), "body": json.loads(body)}
                )
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/reviews"


PRIMARY = Receiver()
FALLBACK = Receiver()

STACK_ENV = {
    "HAVEN_REVIEW_PUBLISH_URL": PRIMARY.url,
    "HAVEN_REVIEW_PUBLISH_FALLBACK_URL": FALLBACK.url,
    # The tiny model writes until it is stopped: short answers keep the test fast; a small
    # context makes the components pass split the submission into several calls.
    "HAVEN_REVIEW_ANSWER_TOKENS": "12",
    "HAVEN_LLM_CTX": "1024",
    "HAVEN_REVIEW_LLM_RETRY_SECONDS": "0.5",
}


@pytest.fixture(autouse=True, scope="module")
def _receivers() -> Iterator[None]:
    yield
    PRIMARY.server.shutdown()
    FALLBACK.server.shutdown()


def submit(stack: Stack, who: Account, commit: str, **archives: bytes) -> str:
    files = {name: (f"{name}.zip", data, "application/zip") for name, data in archives.items()}
    response = stack.client.post(
        "/api/v1/reviews",
        data={"student_id": "st-7", "assignment_id": "grades", "new_commit": commit},
        files=files,
        headers=who.headers,
    )
    assert response.status_code == 202, response.text
    return str(response.json()["task_id"])


def wait_review(stack: Stack, who: Account, task_id: str) -> dict[str, Any]:
    def done() -> bool:
        state = stack.client.get(f"/api/v1/reviews/{task_id}", headers=who.headers).json()
        return state["status"] in ("ready", "failed", "canceled")

    wait_for(done, 240, "the review to end")
    review: dict[str, Any] = stack.client.get(
        f"/api/v1/reviews/{task_id}", headers=who.headers
    ).json()
    return review


def _finding(result: dict[str, Any], rule: str) -> dict[str, Any]:
    matches = [f for f in result["static_analysis"]["findings"] if f.get("rule") == rule]
    assert matches, (rule, result["static_analysis"]["findings"])
    return matches[0]


@pytest.mark.slow
def test_a_submission_is_reviewed_scored_and_published_once(stack: Stack, tenant: Account) -> None:
    task_id = submit(
        stack, tenant, "c0ffee1", new_zip=z.project_new(), old_zip=z.project_old(),
        logs_zip=z.run_logs(repeats=9),
    )  # fmt: skip
    review = wait_review(stack, tenant, task_id)
    assert review["status"] == "ready", (review["error"], review["error_message"])
    result = review["result"]

    # The seeded defects, each named on its line.
    lines = z.DEFECT_LINES
    assert _finding(result, "F401")["start_line"] == lines["unused_import"]
    assert _finding(result, "E722")["start_line"] == lines["bare_except"]
    assert _finding(result, "B307")["start_line"] == lines["eval"]
    assert _finding(result, "B608")["start_line"] == lines["sql"]
    assert {f["path"] for f in result["static_analysis"]["findings"]} <= {
        "grades.py",
        "util.py",
        "test_grades.py",
    }

    # The repeated traceback is one group with its count, diagnosed by the model.
    logs = result["pass4_logs"]
    tracebacks = [g for g in logs["groups"] if g["template"].startswith("Traceback")]
    assert len(tracebacks) == 1 and tracebacks[0]["count"] == 9
    assert logs["diagnosis"]

    # Every changed file is accounted for; the unchanged README is not a change.
    coverage = {c["path"]: c["review"] for c in result["coverage"]}
    assert set(coverage) == {"grades.py", "util.py", "test_grades.py"}
    assert all(status in ("reviewed", "partly", "skipped") for status in coverage.values())
    assert result["skipped_entries"]["new"] == [
        {"path": "photo.png", "reason": "not an allowed file type"}
    ]
    for section in ("pass1_architecture", "pass2_components", "pass3_synthesis"):
        assert section in result
    assert 0 <= result["overall_score"] <= 5 and result["overall_score"] < 5
    # The submission's own tests ran in the sandbox: one passes, one fails.
    tests = result["tests"]
    assert tests["ran"], tests
    assert (tests["passed"], tests["failed"]) == (1, 1)
    assert result["usage"]["completion_tokens"] > 0
    # Every llm call was reserved and settled against the tenant's budget, one ledger row each.
    with stack.session_factory() as session:
        rows = (
            session.execute(
                select(UsageEntry).where(
                    UsageEntry.tenant_id == tenant.tenant_id, UsageEntry.kind == "review"
                )
            )
            .scalars()
            .all()
        )
    assert len(rows) == result["model"]["calls"]
    assert sum(r.completion_tokens for r in rows) == result["usage"]["completion_tokens"]

    # Published exactly once, to the primary receiver.
    wait_for(lambda: len(PRIMARY.received) >= 1, 30, "the primary receiver to get the review")
    sent = [r for r in PRIMARY.received if r["body"]["task_id"] == task_id]
    assert len(sent) == 1
    assert sent[0]["key"] == sent[0]["body"]["idempotency_key"]
    assert sent[0]["body"]["result"]["overall_score"] == result["overall_score"]
    assert not [r for r in FALLBACK.received if r["body"]["task_id"] == task_id]

    def delivered() -> bool:
        read = stack.client.get(f"/api/v1/reviews/{task_id}", headers=tenant.headers).json()
        return bool(read["publication"]["state"] == "delivered")

    wait_for(delivered, 30, "the review's publication to say delivered")

    # The same submission again is the same review, not a second one.
    again = stack.client.post(
        "/api/v1/reviews",
        data={"student_id": "st-7", "assignment_id": "grades", "new_commit": "c0ffee1"},
        files={
            "new_zip": ("n.zip", z.project_new(), "application/zip"),
            "old_zip": ("o.zip", z.project_old(), "application/zip"),
            "logs_zip": ("l.zip", z.run_logs(repeats=9), "application/zip"),
        },
        headers=tenant.headers,
    )
    assert again.status_code == 200 and again.json()["task_id"] == task_id


@pytest.mark.slow
def test_with_the_primary_down_the_fallback_gets_it(stack: Stack, tenant: Account) -> None:
    PRIMARY.down = True
    try:
        task_id = submit(stack, tenant, "beef002", new_zip=z.project_new())
        review = wait_review(stack, tenant, task_id)
        assert review["status"] == "ready", (review["error"], review["error_message"])
        wait_for(
            lambda: any(r["body"]["task_id"] == task_id for r in FALLBACK.received),
            30,
            "the fallback receiver to get the review",
        )
    finally:
        PRIMARY.down = False
    assert len([r for r in FALLBACK.received if r["body"]["task_id"] == task_id]) == 1
    assert not [r for r in PRIMARY.received if r["body"]["task_id"] == task_id]
    assert PRIMARY.refused >= 1
    with stack.session_factory() as session:
        delivery = session.execute(
            select(ReviewDelivery).where(ReviewDelivery.review_id == task_id)
        ).scalar_one()
    assert delivery.state == "delivered" and delivery.delivered_to == "fallback"
    assert [a["target"] for a in delivery.log] == ["primary", "fallback"]
    assert delivery.log[0]["outcome"] == "HTTP 503"


def test_another_tenants_review_is_404_and_a_spent_budget_stops_a_review(
    stack: Stack, tenant: Account, admin: Account
) -> None:
    other = create_tenant_with_admin(stack.client, admin)
    budget = stack.client.put(
        f"/api/v1/admin/tenants/{other.tenant_id}/budget",
        json={"token_budget": 10},
        headers=admin.headers,
    )
    assert budget.status_code == 200, budget.text
    task_id = submit(stack, tenant, "0ddba11", new_zip=z.project_old())
    response = stack.client.get(f"/api/v1/reviews/{task_id}", headers=other.headers)
    assert response.status_code == 404

    # A tenant whose budget cannot hold one call: the review stops with the reason, and
    # nothing was generated or charged.
    spent = submit(stack, other, "5pent01", new_zip=z.project_old())
    review = wait_review(stack, other, spent)
    assert (review["status"], review["error"]) == ("failed", "budget")
    used = stack.client.get(
        f"/api/v1/admin/tenants/{other.tenant_id}/budget", headers=admin.headers
    ).json()
    assert used["used"] == 0
