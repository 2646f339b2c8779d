"""The embedding service's settings (``HAVEN_EMB_*``)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from haven.lexical import BM25
from models.defaults import DEFAULT_EMBED_ALIAS
from models.settings import ModelStoreSettings


class EmbSettings(ModelStoreSettings):
    # Aliases served, comma-separated in the environment: HAVEN_EMB_ALIASES=minilm,e5
    emb_aliases: Annotated[list[str], NoDecode] = [DEFAULT_EMBED_ALIAS]
    emb_device: str = "cpu"
    # Processes holding a copy of each model, taking batches from the model's one queue
    # (emb.replica), the cores shared out among them. Measured on 2 cores, ONNX int8:
    # - emb alone on quiet cores (bench/emb/backends --settings, two runs): one replica of
    #   two threads beat two of one (1.83x raw PyTorch on 256-token chunks and 1.46x on
    #   sentences, against 1.65x and 1.10x; PyTorch 0.95x / 0.69x against 0.84x / 0.54x);
    # - ingesting, emb sharing the cores with the API, worker and stores (bench/ingest,
    #   800 documents): two replicas of one thread spent 58.5 CPU-s in the model against
    #   72.9 s for one of two (a descheduled thread stalls the others of its operation), and
    #   ingest ran 1.01x raw encode end to end against 0.86x.
    # The same on an AVX-512 Xeon with the unfused layer norms (emb/encoder.py): alone 2.14x
    # (1x2) and 1.90x (2x1) on chunks; ingesting, 2x1 spent 37.5 CPU-s in the model against
    # 45.4 s and ran 1.06x raw encode against 0.98x. On an AVX-512 VNNI EPYC alone: 3.18x
    # (1x2) and 2.18x (2x1) on chunks; ingesting with 2x1, 1.38-1.55x raw encode.
    # Ingest and re-index are where emb's throughput matters, so 2; on a node of its own, 1
    # replica with all cores. On a GPU, 1.
    emb_replicas: int = Field(default=2, ge=1)
    # Intra-op threads per replica (torch's, or ONNX Runtime's for an `onnx` model); None
    # shares the cores out among the replicas.
    emb_torch_threads: int | None = Field(default=None, ge=1)
    # Requests waiting together are merged into one model call of at most this many texts;
    # the first text waits at most emb_max_wait_ms for others to join.
    emb_max_batch_size: int = Field(default=32, ge=1)
    emb_max_wait_ms: float = Field(default=5.0, ge=0)
    # Texts of one model call are sorted by length and run in forward passes of this size:
    # less padding than one pass over a mixed batch. On CPU a pass of 4 texts costs no more
    # per token than one of 32, so short passes win: 4 served ~5% more texts/s than 8 and
    # ~25% more than 16 in bench/emb (sentences of 10-190 tokens); the same for ONNX Runtime
    # (bench/emb/backends: on chunks 4 and 8 equal, 16 slower; on sentences 4 best). On a
    # GPU, larger.
    emb_encode_batch_size: int = Field(default=4, ge=1)
    # Texts waiting per model beyond which requests are refused at once (503 + Retry-After).
    emb_max_queue: int = Field(default=1024, ge=1)
    emb_max_items_per_request: int = Field(default=256, ge=1)
    emb_retry_after_seconds: int = Field(default=1, ge=1)
    # BM25 parameters of the sparse document vectors; avg length in analyzed terms per chunk.
    emb_bm25_k1: float = 1.2
    emb_bm25_b: float = 0.75
    emb_bm25_avg_length: float = Field(default=100.0, gt=0)

    @field_validator("emb_aliases", mode="before")
    @classmethod
    def _split_aliases(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [alias.strip() for alias in value.split(",") if alias.strip()]
        return value

    @model_validator(mode="after")
    def _consistent_limits(self) -> EmbSettings:
        if not self.emb_aliases:
            raise ValueError("HAVEN_EMB_ALIASES must name at least one alias")
        if self.emb_max_items_per_request > self.emb_max_queue:
            raise ValueError(
                "HAVEN_EMB_MAX_ITEMS_PER_REQUEST cannot exceed HAVEN_EMB_MAX_QUEUE:"
                " such a request could never be queued"
            )
        return self

    @property
    def bm25(self) -> BM25:
        return BM25(k1=self.emb_bm25_k1, b=self.emb_bm25_b, avg_length=self.emb_bm25_avg_length)
