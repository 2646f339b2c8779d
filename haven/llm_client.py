"""Client of the generation service (``llm``), for the API's RAG answers.

The service speaks OpenAI's wire format; this client streams a chat completion as text deltas
and a final usage, counts tokens for prompt budgeting, and turns the service's refusals into
two exceptions: ``LlmUnavailable`` (busy, down or timed out: retry later) and ``LlmRejected``
(the request itself was refused).

Closing the stream early (the caller's client went away) closes the HTTP connection, which
the service notices and answers by stopping the generation and freeing its slot.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx


class LlmUnavailable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LlmRejected(Exception):
    pass


@dataclass(frozen=True)
class TokenCounts:
    model: str  # the alias the service serves
    version: str
    context_length: int
    counts: list[int]
    prompt_tokens: int | None
    # The served file itself (manifest name and sha256); None from a service that does not
    # report them.
    name: str | None = None
    sha256: str | None = None

    @property
    def identity(self) -> str:
        """What the served model is, whatever alias it is behind: two files never share it."""
        if self.name is None or self.sha256 is None:
            return f"{self.model}:{self.version}"
        return f"{self.name}/{self.version}/{self.sha256}"


@dataclass(frozen=True)
class Sampling:
    """Every request parameter that shapes the generated text."""

    max_tokens: int
    temperature: float
    seed: int | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    def body(self) -> dict[str, Any]:
        """The request fields, leaving out what is not set (the service's defaults apply)."""
        fields: dict[str, Any] = {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
            "top_p": self.top_p,
            "stop": list(self.stop) or None,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
        }
        return {key: value for key, value in fields.items() if value is not None}


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Completed:
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


StreamEvent = Delta | Completed


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        return float(value)
    except ValueError:
        return None


def _error_message(response: httpx.Response, body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace")[:300]


def _raise_for(response: httpx.Response, body: bytes) -> None:
    if response.status_code in (429, 502, 503, 504):
        raise LlmUnavailable(
            f"the generation service answered {response.status_code}: "
            + _error_message(response, body),
            retry_after=_retry_after(response),
        )
    if response.status_code >= 400:
        raise LlmRejected(_error_message(response, body))


def placement_headers(tenant: str | None, priority: str = "interactive") -> dict[str, str]:
    """The headers that place an llm request in the service's fair queue (``llm.slots``):
    the tenant it is for and ``interactive`` (a person waits) or ``batch`` (a job)."""
    headers = {"X-Haven-Priority": priority}
    if tenant is not None:
        headers["X-Haven-Tenant"] = tenant
    return headers


class AsyncLlmClient:
    def __init__(self, base_url: str, *, timeout: float = 600.0) -> None:
        # Streams may wait in the service's queue and then generate for minutes; the service
        # enforces its own request time limit.
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(timeout, connect=5.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )
        # Told of every finished generation (the API counts tokens per tenant with it).
        self.on_completed: Callable[[Completed], None] | None = None

    async def aclose(self) -> None:
        await self._client.aclose()

    async def count_tokens(
        self, texts: list[str], messages: list[dict[str, str]] | None = None
    ) -> TokenCounts:
        body: dict[str, Any] = {"texts": texts}
        if messages is not None:
            body["messages"] = messages
        try:
            response = await self._client.post("/tokenize", json=body, timeout=30.0)
        except httpx.HTTPError as exc:
            raise LlmUnavailable(f"the generation service is unreachable: {exc}") from exc
        _raise_for(response, response.content)
        data = response.json()
        return TokenCounts(
            model=data["model"],
            version=data["version"],
            context_length=data["context_length"],
            counts=data["counts"],
            prompt_tokens=data.get("prompt_tokens"),
            name=data.get("name"),
            sha256=data.get("sha256"),
        )

    async def stream_chat(
        self,
        messages: list[dict[str, str]],
        sampling: Sampling,
        *,
        tenant: str | None = None,
        priority: str = "interactive",
    ) -> AsyncIterator[StreamEvent]:
        """Text deltas, then one ``Completed``. Raises before the first delta when the
        service refuses the request, and ``LlmUnavailable`` when the stream breaks.
        ``tenant`` and ``priority`` (``interactive`` or ``batch``) place the request in the
        service's fair queue."""
        body: dict[str, Any] = {
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            **sampling.body(),
        }
        headers = placement_headers(tenant, priority)
        try:
            async with self._client.stream(
                "POST", "/v1/chat/completions", json=body, headers=headers
            ) as response:
                if response.status_code >= 400:
                    _raise_for(response, await response.aread())
                finish_reason: str | None = None
                async for line in response.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    payload = line[len("data: ") :]
                    if payload == "[DONE]":
                        break
                    chunk = json.loads(payload)
                    if "error" in chunk:
                        raise LlmUnavailable(str(chunk["error"].get("message", "failed")))
                    for choice in chunk.get("choices", []):
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            yield Delta(text)
                        if choice.get("finish_reason"):
                            finish_reason = choice["finish_reason"]
                    usage = chunk.get("usage")
                    if usage and finish_reason is not None:
                        completed = Completed(
                            finish_reason, usage["prompt_tokens"], usage["completion_tokens"]
                        )
                        if self.on_completed is not None:
                            self.on_completed(completed)
                        yield completed
                        return
                raise LlmUnavailable("the generation stream ended without finishing")
        except httpx.HTTPError as exc:
            raise LlmUnavailable(f"the generation service is unreachable: {exc}") from exc
