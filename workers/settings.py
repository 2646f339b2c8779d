"""The workers' settings (``HAVEN_*``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from haven.language import DEFAULT_LANGUAGES, parse_languages
from haven.maintenance_settings import BackupSettings, MaintenanceSettings
from haven.queueing import QUEUES
from haven.review_settings import ReviewSettings
from haven.sandbox import SandboxSettings
from models.defaults import DEFAULT_EMBED_ALIAS
from models.settings import ModelStoreSettings


class WorkerSettings(ModelStoreSettings):
    emb_url: str = "http://127.0.0.1:8082"
    # The code-review pipeline (HAVEN_REVIEW_*).
    review: ReviewSettings = Field(default_factory=ReviewSettings)
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
    # The workers' Prometheus metrics (haven_jobs_ended_total, haven_job_duration_seconds,
    # haven_extraction_failures_total) on this port; 0: none (the all-in-one serves them on
    # the API's /metrics instead).
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)
    # Where an embedded beat (haven up, celery worker -B) keeps its schedule state.
    beat_schedule_path: Path = Path("var/celerybeat-schedule")
    # Languages a chunk's language is detected among (ISO 639-1, comma-separated); a chunk
    # in none of them is "und". The API's HAVEN_LANGUAGES should be the same.
    languages: Annotated[list[str], NoDecode] = list(DEFAULT_LANGUAGES)

    @field_validator("languages", mode="before")
    @classmethod
    def _known_languages(cls, value: Any) -> Any:
        return list(parse_languages(value))

    # --- code runs (workers/runs) ---
    # The sandbox: its limits, uid and languages (HAVEN_SANDBOX_*, validated and reported
    # in every run's result).
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
    # The generation service, for the pipelines that call a model (a code run's failure no
    # registry entry explains, the review passes).
    llm_url: str = "http://127.0.0.1:8083"
    runs_explain_max_tokens: int = Field(default=256, ge=16, le=4096)
    runs_explain_timeout_seconds: float = Field(default=120.0, gt=0)
    # The runner's /healthz and /readyz (a no-op sandbox run); 0: not served.
    runner_health_port: int = Field(default=0, ge=0, le=65535)
    runner_health_host: str = "0.0.0.0"  # noqa: S104 - probed by the orchestrator
    # --- analyze (workers/analyze) ---
    # The analyses call the generation service at ``llm_url`` (above).
    llm_timeout_seconds: float = 600.0
    # Tokens reserved for one part's answer (map) and for a combined answer (reduce).
    analyze_map_tokens: int = Field(default=256, ge=8)
    analyze_reduce_tokens: int = Field(default=512, ge=8)
    analyze_temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    analyze_seed: int = 0
    # Input tokens (the model's own) an analysis may read in all, counted after extraction.
    analyze_max_input_tokens: int = Field(default=2_000_000, ge=1)
    # How long one llm call may wait out a busy service (503/429, with backoff) before the
    # job is retried by the runner instead.
    analyze_llm_wait_seconds: float = Field(default=900.0, gt=0)

    # --- blue/green re-index (haven/reindex.py) ---
    # Chunks embedded per request while a new collection is built.
    reindex_batch: int = Field(default=64, ge=1, le=256)
    # Hours the replaced collection is kept after a switch for a one-step rollback.
    reindex_keep_previous_hours: float = Field(default=24.0, ge=0)
    # The gate: the new index's recall@10 on the eval queries may be at most this much
    # below the old one's (0.05: five queries in a hundred).
    reindex_recall_margin: float = Field(default=0.05, ge=0, le=1)
    # Eval queries of the gate: the opening words of this many chunks spread over the corpus.
    reindex_eval_queries: int = Field(default=20, ge=0, le=1000)
    # --- clean-up (workers/maintenance/cleanup.py) ---
    # Objects and vectors younger than this are never orphans: an upload or an ingest may
    # be writing them now.
    cleanup_grace_hours: float = Field(default=24.0, ge=0)
    # --- nightly maintenance (workers/maintenance) ---
    # The schedule (HAVEN_MAINTENANCE_SCHEDULE) and the backups' target and retention
    # (HAVEN_BACKUP_*).
    maintenance: MaintenanceSettings = Field(default_factory=MaintenanceSettings)
    backup: BackupSettings = Field(default_factory=BackupSettings)

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
