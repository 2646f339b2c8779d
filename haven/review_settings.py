"""The code-review pipeline's settings (``HAVEN_REVIEW_*``), read by the API (what a submission
may be) and by the workers (how it is reviewed and published). Validated at start-up: a zero or
negative limit or timeout is refused with the setting's name, not discovered by a failing job."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AnyHttpUrl, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from haven.archives import ArchiveLimits
from haven.sandbox.settings import RunLimits

MiB = 1024 * 1024

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]

# Files a review looks at; everything else in an archive is listed as skipped, never extracted.
DEFAULT_ALLOWED_GLOBS = [
    "*.py", "*.pyi", "*.js", "*.jsx", "*.ts", "*.tsx", "*.java", "*.kt", "*.go", "*.rs",
    "*.c", "*.h", "*.cc", "*.cpp", "*.hpp", "*.cs", "*.rb", "*.php", "*.swift", "*.scala",
    "*.sql", "*.sh", "*.html", "*.css", "*.md", "*.rst", "*.txt", "*.toml", "*.cfg", "*.ini",
    "*.yaml", "*.yml", "*.json", "*.xml", "*.log", "Makefile", "Dockerfile", "*.ipynb",
]  # fmt: skip


class ReviewSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HAVEN_REVIEW_", extra="ignore")

    # --- what a submission may be (the API refuses more with 413, naming the part) ---
    max_archive_bytes: PositiveInt = 20 * MiB  # each of new_zip / old_zip
    max_logs_bytes: PositiveInt = 20 * MiB  # logs_zip
    max_field_bytes: PositiveInt = 4096  # each text field
    max_entries: PositiveInt = 5000  # entries in one archive
    max_file_bytes: PositiveInt = 2 * MiB  # one file, uncompressed
    max_total_bytes: PositiveInt = 100 * MiB  # one archive, uncompressed
    max_ratio: PositiveFloat = 100.0  # uncompressed / compressed, per entry (zip bombs)
    max_path_length: PositiveInt = 512
    allowed_globs: Annotated[list[str], NoDecode] = DEFAULT_ALLOWED_GLOBS

    # --- static analysis ---
    linter_timeout_seconds: PositiveFloat = 60.0
    linter_memory_mb: PositiveInt = 1024
    # Findings on unchanged lines are dropped unless this is off (reviewdog's "added" mode).
    only_changed_lines: bool = True
    max_findings: PositiveInt = 200  # kept in the result; the rest counted in the summary

    # --- LLM passes ---
    llm_timeout_seconds: PositiveFloat = 600.0
    # The answer's share of the context, kept free of the prompt (PR-Agent: soft/hard reserve).
    answer_tokens: PositiveInt = 384
    # Component reviews are at most this many llm calls; files left over are "skipped: budget".
    max_component_calls: PositiveInt = 6
    context_lines_before: int = Field(default=5, ge=0)
    context_lines_after: int = Field(default=1, ge=0)
    llm_retry_seconds: PositiveFloat = 5.0  # first wait after a busy llm, doubling
    llm_max_wait_seconds: PositiveFloat = 300.0  # total wait for a busy llm before failing

    # --- the submission's tests, in the code-run sandbox (HAVEN_SANDBOX_* applies) ---
    test_limits: RunLimits = RunLimits(
        wall_seconds=60, cpu_seconds=30, memory_mb=1024, processes=64, output_bytes=256 * 1024
    )

    # --- log pass ---
    max_log_lines: PositiveInt = 200_000
    max_log_groups: PositiveInt = 1000  # Drain clusters kept (bounded memory)
    log_samples: PositiveInt = 3
    log_groups_to_llm: PositiveInt = 3

    # --- publishing (transactional outbox) ---
    publish_url: AnyHttpUrl | None = None
    publish_fallback_url: AnyHttpUrl | None = None
    publish_timeout_seconds: PositiveFloat = 10.0
    publish_max_attempts: PositiveInt = 8  # rounds (primary, then fallback) before giving up
    publish_backoff_seconds: PositiveFloat = 5.0
    publish_backoff_max_seconds: PositiveFloat = 600.0

    @field_validator("allowed_globs", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @model_validator(mode="after")
    def _coherent(self) -> ReviewSettings:
        if self.max_file_bytes > self.max_total_bytes:
            raise ValueError("HAVEN_REVIEW_MAX_FILE_BYTES must not exceed MAX_TOTAL_BYTES")
        if not self.allowed_globs:
            raise ValueError("HAVEN_REVIEW_ALLOWED_GLOBS must name at least one pattern")
        return self

    def archive_limits(self, part: str) -> ArchiveLimits:
        """The limits for one form part: logs come in any file name, code only in the
        allowed types."""
        return ArchiveLimits(
            max_entries=self.max_entries,
            max_file_bytes=self.max_file_bytes,
            max_total_bytes=self.max_total_bytes,
            max_ratio=self.max_ratio,
            max_path_length=self.max_path_length,
            allowed_globs=("*",) if part == "logs_zip" else tuple(self.allowed_globs),
        )
