"""Token generation on one llama.cpp context, run on that slot's own thread.

A ``llama_cpp.Llama`` is not thread-safe (it owns one context and its KV cache), so each slot
has its own instance and a single-thread executor: a slot's context is only ever touched by
its thread. The weights are memory-mapped, so N slots share one copy of them in the page
cache and cost N KV caches, not N models.

The generation loop is ours rather than ``Llama.create_completion``: it checks for a
cancelled or expired request after every token (so generation stops within one token), counts
tokens exactly for ``usage``, and decodes text incrementally (``create_completion`` re-decodes
the whole completion on every token, which grows quadratically).
"""

from __future__ import annotations

import codecs
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import llama_cpp

# The service's fixed sampler settings beside the request's temperature and top_p: those of
# llama.cpp's own server, which keep small models from wandering into the long tail.
TOP_K = 40
MIN_P = 0.05

EndReason = Literal["stop", "length", "cancelled", "timeout"]


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Finished:
    reason: EndReason
    prompt_tokens: int
    completion_tokens: int
    started_at: float  # perf_counter when the slot's thread began work
    first_token_at: float | None
    finished_at: float


@dataclass(frozen=True)
class Failed:
    error: BaseException


Event = TextDelta | Finished | Failed
Emit = Callable[[Event], None]


class StopFilter:
    """Holds back text that may be the start of a stop string, and cuts at a full one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stops)
        self._pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Return the text safe to send now and whether a stop string was reached."""
        if not self._stops:
            return text, False
        pending = self._pending + text
        cut = min((i for i in (pending.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self._pending = ""
            return pending[:cut], True
        held = max((_overlap(pending, s) for s in self._stops), default=0)
        self._pending = pending[len(pending) - held :]
        return pending[: len(pending) - held], False

    def flush(self) -> str:
        text, self._pending = self._pending, ""
        return text


def _overlap(text: str, stop: str) -> int:
    """Length of the longest end of ``text`` that is a beginning of ``stop``."""
    for size in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:size]):
            return size
    return 0


class Slot:
    """One llama.cpp context and the one thread allowed to use it."""

    def __init__(self, index: int, llama: llama_cpp.Llama) -> None:
        self.index = index
        self.llama = llama
        self._vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self.adds_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llm-slot-{index}")

    @classmethod
    def load(
        cls,
        index: int,
        path: Path,
        *,
        n_ctx: int,
        n_threads: int,
        n_batch: int,
    ) -> Slot:
        llama = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            n_gpu_layers=0,
            use_mmap=True,
            verbose=False,
        )
        return cls(index, llama)

    def submit(self, job: Callable[[], Any]) -> Future[Any]:
        return self._executor.submit(job)

    def is_end_of_generation(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.llama.close()

    def generate(
        self,
        prompt_tokens: Sequence[int],
        params: SamplingParams,
        *,
        cancel: threading.Event,
        deadline: float,
        emit: Emit,
    ) -> Finished:
        """Generate on the calling thread (the slot's), sending text as it is decoded.

        ``deadline`` is a ``time.monotonic()`` value. Returns the final event, which the
        caller also emits.
        """
        started = time.perf_counter()
        llama = self.llama
        llama.set_seed(params.seed if params.seed is not None else random.getrandbits(32))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = StopFilter(params.stop)
        completion = 0
        first_token_at: float | None = None
        reason: EndReason = "length"
        hit_stop_string = False
        tokens = llama.generate(
            prompt_tokens,
            top_k=TOP_K,
            top_p=params.top_p,
            min_p=MIN_P,
            temp=params.temperature,
            repeat_penalty=1.0,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
        )
        # closing(): a generator left by ``break`` is otherwise closed only when collected.
        with closing(tokens):
            for token in tokens:
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                if cancel.is_set():
                    reason = "cancelled"
                    break
                if time.monotonic() >= deadline:
                    reason = "timeout"
                    break
                if self.is_end_of_generation(token):
                    reason = "stop"
                    break
                completion += 1
                text, stopped = stops.push(decoder.decode(llama.detokenize([token])))
                if text:
                    emit(TextDelta(text))
                if stopped:
                    reason = "stop"
                    hit_stop_string = True
                    break
                if completion >= params.max_tokens:
                    break
        if reason in {"stop", "length"} and not hit_stop_string:
            # Text held back as a possible stop string, and bytes of an unfinished character.
            tail = stops.flush() + decoder.decode(b"", final=True)
            if tail:
                emit(TextDelta(tail))
        return Finished(
            reason=reason,
            prompt_tokens=len(prompt_tokens),
            completion_tokens=completion,
            started_at=started,
            first_token_at=first_token_at,
            finished_at=time.perf_counter(),
        )
