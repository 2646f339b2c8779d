"""What a failed job tells its user: a stable reason code and a sentence, never the text of
the exception behind it (that goes to the worker's log)."""

from __future__ import annotations

from haven.emb_client import EmbeddingRejected, EmbeddingUnavailable
from workers.ingest.extract import ExtractionError
from workers.ingest.handler import IngestHandler
from workers.jobs.runner import reason_for

SECRET = "password=hunter2 at /srv/haven/internal.py line 12"


def test_a_broken_document_fails_at_once_with_an_extract_code() -> None:
    reason = reason_for(IngestHandler(), ExtractionError("corrupt PDF: no pages"))
    assert reason.code.startswith("extract.")
    assert reason.permanent
    assert reason.message == "corrupt PDF: no pages"


def test_an_unavailable_embedding_service_is_retried_under_its_own_code() -> None:
    reason = reason_for(IngestHandler(), EmbeddingUnavailable(f"unreachable: {SECRET}"))
    assert (reason.code, reason.permanent) == ("emb.unavailable", False)
    assert SECRET not in reason.message


def test_a_refused_text_is_not_retried() -> None:
    reason = reason_for(IngestHandler(), EmbeddingRejected(f"422: {SECRET}"))
    assert (reason.code, reason.permanent) == ("emb.rejected", True)
    assert SECRET not in reason.message


def test_an_unexpected_error_is_internal_and_keeps_its_text_out_of_the_job() -> None:
    reason = reason_for(IngestHandler(), KeyError(SECRET))
    assert (reason.code, reason.permanent) == ("internal", False)
    assert SECRET not in reason.message and "KeyError" not in reason.message
