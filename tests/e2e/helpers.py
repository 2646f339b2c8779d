"""What the end-to-end tests do through the API: upload, wait for jobs, search."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.e2e.conftest import Stack
from tests.fixtures.api import Account


def wait_for(check: Callable[[], bool], timeout: float, what: str, every: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def upload(stack: Stack, who: Account, name: str, content: bytes, **fields: Any) -> dict[str, Any]:
    response = stack.client.post(
        "/api/v1/documents", files={"file": (name, content)}, data=fields, headers=who.headers
    )
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


def job(stack: Stack, who: Account, job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = stack.client.get(f"/api/v1/jobs/{job_id}", headers=who.headers).json()
    return body


def wait_job(
    stack: Stack, who: Account, job_id: str, states: set[str], timeout: float = 120
) -> dict[str, Any]:
    wait_for(
        lambda: job(stack, who, job_id)["state"] in states,
        timeout,
        f"job {job_id} to reach {states}; last: {job(stack, who, job_id)}",
    )
    return job(stack, who, job_id)


def search(stack: Stack, who: Account, query: str, **extra: Any) -> list[dict[str, Any]]:
    response = stack.client.post(
        "/api/v1/search", json={"query": query, "top_k": 20, **extra}, headers=who.headers
    )
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results
