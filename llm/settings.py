"""The generation service's settings (``HAVEN_LLM_*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from models.settings import ModelStoreSettings


class LlmSettings(ModelStoreSettings):
    # The registry alias of the GGUF to serve; requests may name it (or the model's name).
    llm_alias: str = "chat"
    # Threads of each slot. Slots generate in parallel, so slots x threads should not exceed
    # the cores the container is given.
    llm_threads: int = Field(default=4, ge=1)
    llm_ctx: int = Field(default=4096, ge=64)
    llm_batch: int = Field(default=512, ge=1)
    # Parallel generations: each slot is its own llama.cpp context (weights shared by mmap).
    llm_slots: int = Field(default=1, ge=1)
    # Requests allowed to wait for a slot; one more is refused at once with 503.
    llm_queue: int = Field(default=8, ge=0)
    # Wall-clock limit of one request, waiting for a slot included.
    llm_request_timeout_seconds: float = Field(default=300.0, gt=0)
    llm_retry_after_seconds: int = Field(default=2, ge=1)
    # Request bodies past this many bytes are refused with 413 before they are parsed (room
    # for the API's token counts: a full conversation plus its passages).
    llm_max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # Where verified model files are cached; by default the cache shared with the other
    # model services (HAVEN_MODEL_CACHE_DIR).
    llm_cache_dir: Path | None = None

    @property
    def cache_dir(self) -> Path:
        return self.llm_cache_dir or self.model_cache_dir
