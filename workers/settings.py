"""The workers' settings (``HAVEN_*``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import field_validator
from pydantic_settings import NoDecode

from haven.queueing import QUEUES
from models.defaults import DEFAULT_EMBED_ALIAS
from models.settings import ModelStoreSettings


class WorkerSettings(ModelStoreSettings):
    emb_url: str = "http://127.0.0.1:8082"
    # Dense vectors are written for each of these aliases; the first one's tokenizer chunks.
    emb_aliases: Annotated[list[str], NoDecode] = [DEFAULT_EMBED_ALIAS]
    emb_request_batch: int = 64
    emb_timeout_seconds: float = 120.0
    # MiniLM's window is 256 tokens including [CLS] and [SEP]: a chunk fills it exactly.
    chunk_max_tokens: int = 254
    chunk_overlap_tokens: int = 32
    ocr_enabled: bool = False
    extract_max_pages: int = 2000
    # Each file is extracted in a child process under these limits (workers/ingest/pool.py).
    # The time covers OCR too: a long scanned PDF with OCR on needs more than the default.
    extract_timeout_seconds: float = 300.0
    # Address space of an extractor process, its interpreter and parsers (~200 MiB) included.
    extract_memory_mb: int = 1024
    # What a DOCX may expand to, all parts together (one XML part: at most 64 MiB of it).
    extract_max_uncompressed_mb: int = 500
    # Extractor processes per worker process, and files each handles before it is replaced.
    extract_pool_size: int = 2
    extract_recycle_after: int = 1000
    # Fair shares of the extractor processes between tenants (workers/ingest/pool.py): this
    # many are kept for tenants with nothing being extracted (0: one tenant may take all),
    # and a file that waits this long for one its tenant may take is deferred: its job goes
    # back to the queue without spending an attempt, freeing the job thread.
    extract_reserved_slots: int = 1
    extract_wait_seconds: float = 5.0
    # A deferred job is sent again after this long, doubling per deferral up to the maximum.
    job_defer_seconds: float = 5.0
    job_defer_max_seconds: float = 30.0
    retry_backoff_seconds: float = 2.0
    retry_backoff_max_seconds: float = 300.0
    # A queued job whose message guard expired this long ago is sent again.
    reaper_interval_seconds: float = 30.0
    # Jobs one worker process runs at once, in threads: an ingest job mostly waits on emb,
    # and emb batches better the more chunks wait in its queue.
    worker_concurrency: int = 16
    # A running job writes its heartbeat and progress to PostgreSQL at most this often (a
    # cancel reaches it sooner, through the worker's cancel subscriber, at the next step).
    job_heartbeat_seconds: float = 5.0
    # A step (the work between two progress reports, e.g. one extraction) running longer
    # than this is taken from its run: the job is retried, or failed, with ``step.timeout``.
    # The lease itself is renewed by a keeper thread however long a healthy step takes.
    job_step_deadline_seconds: float = 1800.0
    # The queues (workloads) this worker consumes, comma-separated; every one by default.
    worker_queues: Annotated[list[str], NoDecode] = list(QUEUES)
    # Where an embedded beat (haven up, celery worker -B) keeps its schedule state.
    beat_schedule_path: Path = Path("var/celerybeat-schedule")

    @field_validator("emb_aliases", "worker_queues", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("worker_queues")
    @classmethod
    def _known_queues(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(QUEUES))
        if unknown or not value:
            raise ValueError(f"HAVEN_WORKER_QUEUES takes some of {', '.join(QUEUES)}")
        return value
