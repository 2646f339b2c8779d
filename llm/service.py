"""The generation service: model state, prompt budgets, admission and one generation's
hand-off between the slot's thread and the event loop.

Tokens travel from the slot's thread to the request's coroutine through an asyncio queue
(``call_soon_threadsafe``); cancellation travels back through a ``threading.Event`` that the
generation loop checks after every token.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass
from typing import Literal

import structlog

from haven.contracts.openai import ChatCompletionRequest, CompletionRequest, SamplingRequest
from llm.chat_template import ChatTemplateError
from llm.engine import Event, Failed, Finished, SamplingParams, Slot
from llm.metrics import LlmMetrics
from llm.model import LoadedModel
from llm.settings import LlmSettings
from llm.slots import ANONYMOUS, Priority, SlotPool

log = structlog.get_logger("haven.llm")

# How long past its deadline a request waits for a slot's thread that is stuck in a long
# prompt evaluation (which cannot be interrupted) before answering without it.
DEADLINE_GRACE_SECONDS = 2.0


class NotReady(Exception):
    """The model is loading, or failed to load or verify."""


class UnknownModel(Exception):
    pass


class InvalidPrompt(Exception):
    """The prompt cannot be built (the chat template refused the messages, bad token ids)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class PromptTooLong(Exception):
    def __init__(self, prompt_tokens: int, max_tokens: int | None, context_length: int) -> None:
        wanted = f" plus max_tokens {max_tokens}" if max_tokens is not None else ""
        super().__init__(
            f"the prompt has {prompt_tokens} tokens{wanted}, which does not fit the context"
            f" length of {context_length} tokens"
        )
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context_length = context_length


@dataclass(frozen=True)
class Prompt:
    tokens: list[int]
    params: SamplingParams


@dataclass
class ModelState:
    status: Literal["loading", "ready", "failed"] = "loading"
    error: str | None = None
    failed_file: str | None = None
    model: LoadedModel | None = None
    pool: SlotPool | None = None


class Generation:
    """One admitted request: the events its slot produces and the switch that stops it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        self.cancel = threading.Event()
        self.deadline = deadline
        self._loop = loop
        self._events: asyncio.Queue[Event] = asyncio.Queue()

    def emit(self, event: Event) -> None:
        """Called from the slot's thread."""
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancel.set()

    async def events(self) -> AsyncIterator[Event]:
        """Events until the last one (``Finished`` or ``Failed``); never waits past the
        request's deadline (plus a grace for a prompt evaluation in progress)."""
        while True:
            remaining = self.deadline + DEADLINE_GRACE_SECONDS - time.monotonic()
            try:
                event = await asyncio.wait_for(self._events.get(), timeout=max(remaining, 0))
            except TimeoutError:
                self.cancel.set()
                yield Finished("timeout", 0, 0, 0.0, None, time.perf_counter())
                return
            yield event
            if isinstance(event, Finished | Failed):
                return


class LlmService:
    def __init__(self, settings: LlmSettings, metrics: LlmMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.state = ModelState()
        # Generations in progress, so shutdown can stop them; touched by slot threads too.
        self._running: set[Generation] = set()
        self._running_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    def mark_loaded(self, model: LoadedModel) -> None:
        """Runs on the event loop (the pool's asyncio queue belongs to it)."""
        self.state.pool = SlotPool(model.slots, self.settings.llm_queue, self.metrics)
        self.state.model = model
        self.state.status = "ready"

    def mark_failed(self, error: str, failed_file: str | None = None) -> None:
        self.state.status = "failed"
        self.state.error = error
        self.state.failed_file = failed_file

    def close(self) -> None:
        with self._running_lock:
            for generation in self._running:
                generation.cancel.set()
        if self.state.model is not None:
            self.state.model.close()  # waits for each slot's thread to stop
        self.state.status = "failed"
        self.state.error = "the service is shutting down"

    def ready(self) -> tuple[LoadedModel, SlotPool]:
        model, pool = self.state.model, self.state.pool
        if self.state.status != "ready" or model is None or pool is None:
            raise NotReady(self.state.error or "the model is still loading")
        return model, pool

    # -- prompts ---------------------------------------------------------------------------

    def check_model_name(self, requested: str | None) -> None:
        model, _ = self.ready()
        if requested is None:
            return
        known = {model.alias, model.manifest.name, model.manifest.ref}
        if requested not in known:
            raise UnknownModel(
                f"model {requested!r} is not served here; this service serves {model.alias!r}"
            )

    def chat_prompt(self, request: ChatCompletionRequest) -> Prompt:
        model, _ = self.ready()
        try:
            text = model.template.render(request.messages)
        except ChatTemplateError as exc:
            raise InvalidPrompt(str(exc), "messages") from exc
        stops = (*request.stop_sequences(), *model.template.extra_stops)
        return self._budget(model, model.tokenize(text), request, request.token_limit(), stops)

    def completion_prompt(self, request: CompletionRequest) -> Prompt:
        model, _ = self.ready()
        if isinstance(request.prompt, str):
            tokens = model.tokenize(request.prompt)
        else:
            if any(not 0 <= t < model.n_vocab for t in request.prompt):
                raise InvalidPrompt(f"token ids must be in [0, {model.n_vocab})", "prompt")
            tokens = list(request.prompt)
        return self._budget(
            model, tokens, request, request.token_limit(), tuple(request.stop_sequences())
        )

    def _budget(
        self,
        model: LoadedModel,
        tokens: list[int],
        request: SamplingRequest,
        max_tokens: int | None,
        stops: tuple[str, ...],
    ) -> Prompt:
        if not tokens:
            raise InvalidPrompt("the prompt is empty", "prompt")
        room = model.context_length - len(tokens)
        if room < (max_tokens or 1):
            raise PromptTooLong(len(tokens), max_tokens, model.context_length)
        params = SamplingParams(
            max_tokens=max_tokens or room,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=stops,
            seed=request.seed,
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
        )
        return Prompt(tokens, params)

    # -- generation ------------------------------------------------------------------------

    async def start(
        self,
        prompt: Prompt,
        *,
        arrived: float,
        deadline: float,
        tenant: str = ANONYMOUS,
        priority: Priority = "interactive",
    ) -> Generation:
        """Wait for a slot (bounded, in the fair queue) and start generating on its thread.

        ``arrived`` is the request's ``perf_counter`` arrival (for time to first token),
        ``deadline`` its ``monotonic`` limit; ``tenant`` and ``priority`` place it in the
        queue (``llm.slots``). Raises ``Overloaded`` or ``NotReady``.
        """
        _, pool = self.ready()
        slot = await pool.acquire(deadline - time.monotonic(), tenant, priority)
        loop = asyncio.get_running_loop()
        generation = Generation(loop, deadline)
        with self._running_lock:
            self._running.add(generation)

        def job() -> None:
            try:
                if generation.cancel.is_set():  # the client left while it waited
                    now = time.perf_counter()
                    finished = Finished("cancelled", len(prompt.tokens), 0, now, None, now)
                else:
                    finished = slot.generate(
                        prompt.tokens,
                        prompt.params,
                        cancel=generation.cancel,
                        deadline=deadline,
                        emit=generation.emit,
                    )
                self._record(finished, arrived)
                generation.emit(finished)
            except Exception as exc:  # reported to the request; the slot stays usable
                log.exception("llm.generation.failed", slot=slot.index)
                self.metrics.generations.labels("error").inc()
                generation.emit(Failed(exc))
            finally:
                with self._running_lock:
                    self._running.discard(generation)
                # Only now is the context free: the pool never hands out a busy one.
                self._release_from_thread(loop, pool, slot)

        try:
            slot.submit(job)
        except BaseException:  # the executor is shut down: the service is stopping
            with self._running_lock:
                self._running.discard(generation)
            pool.release(slot)
            raise
        return generation

    def _release_from_thread(
        self, loop: asyncio.AbstractEventLoop, pool: SlotPool, slot: Slot
    ) -> None:
        # A closed loop means shutdown: the pool goes with it.
        with suppress(RuntimeError):
            loop.call_soon_threadsafe(pool.release, slot)

    def _record(self, finished: Finished, arrived: float) -> None:
        metrics = self.metrics
        metrics.generations.labels(finished.reason).inc()
        metrics.prompt_tokens.inc(finished.prompt_tokens)
        metrics.tokens_generated.inc(finished.completion_tokens)
        if finished.first_token_at is not None:
            metrics.time_to_first_token.observe(finished.first_token_at - arrived)
            decoding = finished.finished_at - finished.first_token_at
            if finished.completion_tokens > 1 and decoding > 0:
                metrics.tokens_per_second.observe((finished.completion_tokens - 1) / decoding)
